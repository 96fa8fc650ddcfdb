#!/usr/bin/env python3
"""Labels strings as valid or invalid under GBNF grammars with llama.cpp's own validator, for
tests/fixtures/gbnf/ (crates/bushu/tests/structured.rs checks that bushu's GBNF -> Lark translation on
llguidance accepts exactly the strings llama.cpp accepts). Run once; CI uses the committed output.

    scripts/make-gbnf-fixtures.py [LLAMA_SRC]    (default /tmp/llamacpp/src, from build-llamacpp.sh)

It builds llama.cpp's `test-gbnf-validator` (tests/test-gbnf-validator.cpp: parses the grammar with
llama-grammar.cpp and runs its matcher over the input's code points) in LLAMA_SRC/../build-tests, copies
the grammars of llama.cpp's grammars/ directory that the tests use (MIT license, llama.cpp authors) next
to the synthetic ones written here, and labels for each grammar its hand-written inputs plus seeded
random mutations of them (a character deleted, inserted, replaced or doubled; a cut).
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

SRC = sys.argv[1] if len(sys.argv) > 1 else "/tmp/llamacpp/src"
BUILD = os.path.join(os.path.dirname(SRC), "build-tests")
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "gbnf")
VALIDATOR = os.path.join(BUILD, "bin", "test-gbnf-validator")

# Grammars copied from llama.cpp's grammars/ directory.
LLAMA = ["arithmetic", "json", "json_arr", "list", "chess", "japanese"]

# Grammars written here for the corners of the syntax and of the meaning.
SYNTHETIC = {
    # A repetition followed by a character it also takes: GBNF backtracks, a greedy lexeme would not.
    "greedy": 'root ::= [a-z]+ "x" ws tail\ntail ::= "<" .* ">" | ("ab" | "a") "b"\nws ::= [ \\t\\n]*\n',
    # Counted repetitions, `.`, escapes of every kind, negated classes.
    "counts": 'root ::= "a"{2,3} [0-9]{0,2} . "\\x41\\u00e9\\U0001F600\\t" [^\\n\\]\\-]* "\\\\" ("q"{2,})?\n',
    # Empty alternatives, comments, rules across lines, names that differ in case, nested groups.
    "layout": (
        "# a list of items\n"
        'root ::= item ("," item)* end # trailing comment\n'
        'item ::= | "x" | (\n'
        '  "y" "z"\n'
        "  | Item\n"
        ")\n"
        'Item ::= "I" ("a" "b"?)+ "c"*\n'
        'end ::= "" | "."\n'
    ),
}

INPUTS = {
    "arithmetic": ["x=1\n", "a + b = c\n", "(a+b)*c=d\ne=f\n", "x1_y = 10 \n", "x=\n", "1x=2\n", "a=b", "(a=b\n",
                   "a = b \nc=d\n", "a\n=b\n"],
    "json": ['{"a": 1}', '{}', '[1, 2.5, -3e10, true, null]', '{"k": [{"x": "y\\n\\u00e9"}], "z": false}',
             '"str"', '{"a": 01}', '{"a":}', '[1,]', '{"a": "b"} ', '{\n  "a": 1\n}', '{"a": "\\q"}', '-0.5e-7'],
    "json_arr": ['[\n{"a": 1},\n2]', '[\n]', '[1]', '[\n"x",\n[1, 2]]', '[\n1,2]'],
    "list": ["- a\n", "- milk\n- eggs\n", "- \n", "-a\n", "- x", "- é ü\n- 2\n"],
    "chess": ["1. e4 e5\n2. Nf3 Nc6\n", "1. e4 e5\n", "1. O-O O-O-O\n2. exd5 Qxd5+\n", "1. e4 e5\n10. a8=Q# Kh1\n",
              "1. e9 e5\n2. a3 a4\n", "1. Nbd7 Rxh8\n2. c4 c5\n"],
    "japanese": ["こんにちは", "カタカナ 漢字", "日本語、です。\nはい", "abc", "こ  ん", ""],
    "greedy": ["abx<>", "ax ab", "abcx\tabb", "abx <a>b>", "ax<", "x<>", "abxabb", "abx\n<\n>", "aax aab"],
    "counts": ["aa7zAé\U0001F600\t\\", "aaa12.Aé\U0001F600\tabc\\qq", "aa.Aé\U0001F600\t\\qqq", "a7zAé\U0001F600\t\\",
               "aa123zAé\U0001F600\t\\", "aa\nAé\U0001F600\t]\\", "aa Aé\U0001F600\t-\\", "aaxAé\U0001F600\t\\q"],
    "layout": ["x", "x,yz,", "Iab", ",,x.", "Iabbc,yz.", "yz,Iaaac", "xy", "Ib", "", "."],
}


def build_validator():
    if os.path.exists(VALIDATOR):
        return
    subprocess.run(["cmake", "-S", SRC, "-B", BUILD, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=ON", "-DGGML_NATIVE=OFF"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", BUILD, "-j2", "--target", "test-gbnf-validator"], check=True)


def valid(grammar_path, text):
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", delete=False, suffix=".txt") as f:
        f.write(text)
    try:
        r = subprocess.run([VALIDATOR, grammar_path, f.name], capture_output=True, text=True, errors="replace")
    finally:
        os.unlink(f.name)
    if "Input string is valid" in r.stdout:
        return True
    if "Input string is invalid" in r.stdout:
        return False
    raise SystemExit(f"validator failed on {grammar_path}: {r.stdout} {r.stderr}")


def mutants(s, rng, pool, n):
    out = []
    for _ in range(n):
        k = rng.randrange(5)
        i = rng.randrange(len(s) + 1)
        c = rng.choice(pool)
        if k == 0 and s:
            i = min(i, len(s) - 1)
            out.append(s[:i] + s[i + 1:])
        elif k == 1:
            out.append(s[:i] + c + s[i:])
        elif k == 2 and s:
            i = min(i, len(s) - 1)
            out.append(s[:i] + c + s[i + 1:])
        elif k == 3 and s:
            i = min(i, len(s) - 1)
            out.append(s[:i] + s[i] + s[i:])
        else:
            out.append(s[:i])
    return out


def main():
    build_validator()
    os.makedirs(OUT, exist_ok=True)
    for name in LLAMA:
        shutil.copy(os.path.join(SRC, "grammars", name + ".gbnf"), os.path.join(OUT, name + ".gbnf"))
    for name, text in SYNTHETIC.items():
        with open(os.path.join(OUT, name + ".gbnf"), "w", encoding="utf-8") as f:
            f.write(text)
    rng = random.Random(0)
    cases = []
    for name, inputs in INPUTS.items():
        path = os.path.join(OUT, name + ".gbnf")
        pool = sorted(set("".join(inputs))) + ["é", "\n", " ", '"']
        seen = []
        for s in inputs:
            for t in [s] + mutants(s, rng, pool, 6):
                if t not in seen:
                    seen.append(t)
        labels = [(t, valid(path, t)) for t in seen]
        cases += [{"grammar": name + ".gbnf", "input": t, "valid": v} for t, v in labels]
        print(f"{name}: {sum(v for _, v in labels)} valid, {sum(not v for _, v in labels)} invalid")
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
