#!/usr/bin/env python3
"""Cross-check of `bushu quantize DIR` on byte-level BPE directories against llama.cpp (recorded in
docs/QUANTIZATION.md; CI has no llama.cpp, so nothing here is a test fixture).

  BUSHU_QUANT_HF_BPE_OUT=/tmp/bpe-out cargo test --release -p bushu --test quant_hf byte_level
  python3 scripts/refs/hf_bpe_crosscheck.py /tmp/bpe-out

The test leaves NAME-hf/ (a random-weight fixture with a byte-level BPE tokenizer.json cut from llama.cpp's
vocabulary files) and NAME.gguf (bushu's f16) for NAME in llama-bpe, qwen2, smollm, gpt-2. For each, this
1. runs convert_hf_to_gguf.py --outtype f16 on NAME-hf with `get_vocab_base_pre` pinned to NAME (the truncated
   vocabularies hash to no known model) and compares every metadata value and tensor byte with bushu's file;
2. tokenizes llama.cpp's tokenizer test texts and a few more with llama-tokenize and `bushu tokenize` on
   bushu's file.
"""
import ast, json, os, subprocess, sys

LCPP = '/tmp/llamacpp/src'
BIN = '/tmp/llamacpp/build/bin'
BUSHU = 'target/release/bushu'
sys.path.insert(0, LCPP + '/gguf-py')
from gguf import GGUFReader  # noqa: E402

PIN = f"""import sys, runpy
sys.path.insert(0, {LCPP!r}); sys.path.insert(1, {LCPP + '/gguf-py'!r})
import conversion.base as base
name = sys.argv.pop(1)
base.TextModel.get_vocab_base_pre = lambda self, tok: name
sys.argv[0] = {LCPP + '/convert_hf_to_gguf.py'!r}
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def compare(ours, theirs):
    a, b = GGUFReader(ours), GGUFReader(theirs)
    val = lambda r, k: [bytes(r.fields[k].parts[i]) for i in r.fields[k].data] if k in r.fields else None
    keys = [k for k in set(a.fields) | set(b.fields) if not k.startswith('GGUF.')]
    diff = [k for k in sorted(keys) if val(a, k) != val(b, k)]
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    bad = [n for n in tb if n not in ta or ta[n].tensor_type != tb[n].tensor_type
           or bytes(ta[n].data) != bytes(tb[n].data)]
    return len(keys), diff, len(tb), bad + [n for n in ta if n not in tb]


def texts():
    inp = open('/work/shared/testdata/vocab/ggml-vocab-llama-bpe.gguf.inp').read()
    t = inp.split('\n__ggml_vocab_test__\n')[:-1]
    t.append(open('/work/shared/testdata/shakespeare/val.txt').read()[:3000])
    t += ["fn main() {\n    let x = 1_000_000 * 3.14159;\n\tprintln!(\"{x:>8}\");\n}\n",
          "I'm sure they'll say WE'VE done it; she'd've known. 12345678 + 9 = 12345687",
          "<|im_start|>user\nHi there<|im_end|>\n<think> a plan </think><repo_name>x",
          "Привет, мир! 你好，世界。 こんにちは 🚀🦙 👩‍👩‍👧 مرحبا", "   leading and trailing   \n\n\n  \t  "]
    return t


def main(out):
    env = dict(os.environ, LD_LIBRARY_PATH=BIN)
    for name in ['llama-bpe', 'qwen2', 'smollm', 'gpt-2']:
        ours, theirs = f'{out}/{name}.gguf', f'{out}/{name}-llamacpp.gguf'
        subprocess.run([sys.executable, '-c', PIN, name, f'{out}/{name}-hf', '--outtype', 'f16',
                        '--outfile', theirs], check=True, capture_output=True)
        n_keys, diff, n_tensors, bad = compare(ours, theirs)
        same, n_ids, mism = 0, 0, []
        for t in texts():
            with open('/tmp/hf_bpe_text.txt', 'w') as f:
                f.write(t)
            r = subprocess.run([f'{BIN}/llama-tokenize', '-m', ours, '-f', '/tmp/hf_bpe_text.txt', '--ids',
                                '--log-disable'], capture_output=True, text=True, env=env)
            a = ast.literal_eval([l for l in r.stdout.splitlines() if l.startswith('[')][-1])
            b = json.loads(subprocess.run([BUSHU, 'tokenize', '--model', ours, '--json', t],
                                          capture_output=True, text=True, check=True).stdout)['ids']
            if a == b:
                same, n_ids = same + 1, n_ids + len(a)
            else:
                mism.append(t[:40])
        print(f'{name}: convert_hf_to_gguf.py: {n_keys - len(diff)}/{n_keys} metadata values equal '
              f'(differing: {diff}), {n_tensors - len(bad)}/{n_tensors} tensors byte-identical; '
              f'llama-tokenize: {same}/{len(texts())} texts give bushu\'s ids ({n_ids} ids) {mism or ""}')


if __name__ == '__main__':
    main(sys.argv[1])
