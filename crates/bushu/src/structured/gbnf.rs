//! llama.cpp's GBNF grammars (the syntax of its `--grammar-file` and llama-server's `grammar`) in
//! llguidance's Lark syntax, with GBNF's meaning kept exactly.
//!
//! GBNF matches characters: a rule is a sequence of string literals, character classes (`[a-z]`,
//! `[^"\\]`), `.`, rule references, groups and repetitions (`*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}`), and
//! the whole output must match `root`. The parser here follows llama.cpp's `llama-grammar.cpp` — names
//! of `[a-zA-Z0-9-]`, `#` comments, newlines ending a rule except after `::=`, after `|` and inside
//! parentheses, the escapes `\x`, `\u`, `\U`, `\t`, `\r`, `\n`, `\\`, `\"`, `\[`, `\]`, `\-` — and
//! refuses what llama.cpp refuses, with one line naming the problem.
//!
//! Every GBNF rule becomes a Lark rule (a parser rule of llguidance's Earley parser) and every character
//! of the grammar — of a literal, a class, `.` — a lexeme of its own; the repetitions stay in the rules.
//! One character per lexeme is what keeps GBNF's meaning: llguidance lexes greedily (Lark's `dynamic`
//! lexer), so a lexeme that can be a prefix of another allowed at the same place would change the
//! language — `[a-z]+` as one lexeme `/[a-z]+/` makes `[a-z]+ "x"` refuse `abx` (the lexeme eats the
//! `x`), and `("ab" | "a") "b"` with the literals as lexemes refuses `ab` (`"ab"` wins over `"a"`); both
//! are valid GBNF. One-character lexemes are never prefixes of one another, and the Earley parser
//! explores every way through the rules, as llama.cpp's matcher does. Token references
//! (`<[123]>`, `<|tag|>`) pass through to llguidance's special-token syntax; `!<[123]>` becomes its
//! negated id set `<[^123]>`.

use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::fmt::Write;

/// Whether `text` is a GBNF grammar (a rule defined with `::=`) rather than a Lark one (`name:`).
pub fn is_gbnf(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        let name = l.bytes().take_while(|&b| is_word(b)).count();
        name > 0 && l[name..].trim_start().starts_with("::=")
    })
}

/// The Lark grammar matching what the GBNF grammar `src` matches (its `root` rule as `start`).
pub fn to_lark(src: &str) -> Result<String> {
    let mut p = Parser {
        s: src.as_bytes(),
        pos: 0,
    };
    let mut rules: Vec<(String, Node)> = Vec::new();
    p.space(true);
    while p.pos < p.s.len() {
        let (name, body) = p.rule()?;
        match rules.iter_mut().find(|(n, _)| *n == name) {
            // llama.cpp keeps the last definition of a rule.
            Some(r) => r.1 = body,
            None => rules.push((name, body)),
        }
    }
    let defined: HashMap<&str, usize> = rules.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
    if !defined.contains_key("root") {
        bail!("the grammar has no `root` rule (GBNF starts at root)");
    }
    for (_, body) in &rules {
        if let Some(missing) = body.refs().into_iter().find(|r| !defined.contains_key(r.as_str())) {
            bail!("undefined rule `{missing}`");
        }
    }
    // Lark rule names: lowercase letters, digits, `_` and `-`, starting with a letter; GBNF names
    // may differ only in case, so each gets the index of its rule.
    let lark_name = |n: &str| format!("r{}-{}", defined[n], n.to_ascii_lowercase());
    let mut out = format!("start: {}\n", lark_name("root"));
    for (name, body) in &rules {
        let mut rhs = String::new();
        body.lark(&mut rhs, &lark_name, 0)?;
        writeln!(out, "{}: {rhs}", lark_name(name)).expect("a String");
    }
    Ok(out)
}

/// A parsed GBNF expression.
#[derive(Clone, Debug)]
enum Node {
    Literal(Vec<char>),
    /// A character class: its ranges, negated with `^`.
    Class(bool, Vec<(char, char)>),
    /// `.`: any character.
    Any,
    Rule(String),
    /// `<...>` (or `!<[...]>`, negated): a token reference, as written.
    Token(String),
    Seq(Vec<Node>),
    Alt(Vec<Node>),
    /// At least `.1`, at most `.2` (unbounded: `None`) repetitions.
    Repeat(Box<Node>, u64, Option<u64>),
}

impl Node {
    fn refs(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.visit(&mut |n| {
            if let Node::Rule(r) = n {
                out.push(r.clone());
            }
        });
        out
    }

    fn visit(&self, f: &mut dyn FnMut(&Node)) {
        f(self);
        match self {
            Node::Seq(v) | Node::Alt(v) => v.iter().for_each(|n| n.visit(f)),
            Node::Repeat(n, ..) => n.visit(f),
            _ => {}
        }
    }

    /// Writes this node in Lark syntax; `prec` is the binding of the context (0: alternatives allowed,
    /// 1: inside a sequence, 2: under a repetition).
    fn lark(&self, out: &mut String, name: &dyn Fn(&str) -> String, prec: u8) -> Result<()> {
        match self {
            Node::Literal(cs) if cs.is_empty() => out.push_str("\"\""),
            Node::Literal(cs) => {
                // One lexeme per character (see the module documentation).
                let paren = cs.len() > 1 && prec > 1;
                out.push_str(if paren { "(" } else { "" });
                for (i, &c) in cs.iter().enumerate() {
                    out.push_str(if i > 0 { " \"" } else { "\"" });
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\u{:04x}", c as u32)?,
                        c => out.push(c),
                    }
                    out.push('"');
                }
                out.push_str(if paren { ")" } else { "" });
            }
            Node::Class(negated, ranges) => {
                out.push_str("/[");
                if *negated {
                    out.push('^');
                }
                for &(a, b) in ranges {
                    class_char(out, a);
                    if b != a {
                        out.push('-');
                        class_char(out, b);
                    }
                }
                out.push_str("]/");
            }
            Node::Any => out.push_str("/(?s:.)/"),
            Node::Rule(r) => out.push_str(&name(r)),
            Node::Token(t) => out.push_str(t),
            Node::Seq(v) if v.is_empty() => out.push_str("\"\""),
            Node::Seq(v) if v.len() == 1 => v[0].lark(out, name, prec)?,
            Node::Seq(v) => {
                let paren = prec > 1;
                out.push_str(if paren { "(" } else { "" });
                for (i, n) in v.iter().enumerate() {
                    out.push_str(if i > 0 { " " } else { "" });
                    n.lark(out, name, 1)?;
                }
                out.push_str(if paren { ")" } else { "" });
            }
            Node::Alt(v) => {
                // Empty alternatives (`ws ::= | " "`) make the rest optional.
                let (empty, full): (Vec<&Node>, Vec<&Node>) = v.iter().partition(|n| n.is_empty());
                if full.is_empty() {
                    out.push_str("\"\"");
                    return Ok(());
                }
                let optional = !empty.is_empty();
                let paren = optional || prec > 0;
                out.push_str(if paren { "(" } else { "" });
                for (i, n) in full.iter().enumerate() {
                    out.push_str(if i > 0 { " | " } else { "" });
                    n.lark(out, name, 0)?;
                }
                out.push_str(if paren { ")" } else { "" });
                out.push_str(if optional { "?" } else { "" });
            }
            Node::Repeat(n, min, max) => {
                if n.is_empty() || *max == Some(0) {
                    out.push_str("\"\"");
                    return Ok(());
                }
                // (A | "")^{m,n} is A^{0,n}.
                let stripped;
                let (n, min) = match &**n {
                    Node::Alt(v) if v.iter().any(Node::is_empty) => {
                        stripped = Node::Alt(v.iter().filter(|a| !a.is_empty()).cloned().collect());
                        (&stripped, &0)
                    }
                    n => (n, min),
                };
                out.push_str(if prec > 1 { "(" } else { "" });
                n.lark(out, name, 2)?;
                match (min, max) {
                    (0, None) => out.push('*'),
                    (1, None) => out.push('+'),
                    (0, Some(1)) => out.push('?'),
                    (m, None) => write!(out, "{{{m},}}")?,
                    (m, Some(x)) if m == x => write!(out, "{{{m}}}")?,
                    (m, Some(x)) => write!(out, "{{{m},{x}}}")?,
                }
                out.push_str(if prec > 1 { ")" } else { "" });
            }
        }
        Ok(())
    }

    /// Whether this node matches only the empty string (an empty literal, sequence or group).
    fn is_empty(&self) -> bool {
        match self {
            Node::Literal(cs) => cs.is_empty(),
            Node::Seq(v) => v.iter().all(Node::is_empty),
            Node::Alt(v) => v.iter().all(Node::is_empty),
            Node::Repeat(n, _, max) => n.is_empty() || *max == Some(0),
            _ => false,
        }
    }
}

/// A character inside a regex class: letters and digits as they are, everything else by code point.
fn class_char(out: &mut String, c: char) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        write!(out, "\\x{{{:x}}}", c as u32).expect("a String");
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// llama.cpp's GBNF parser (`llama-grammar.cpp`), building [`Node`]s.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

/// llama.cpp's cap on `{m,n}` counts.
const MAX_REPETITION: u64 = 2000;

impl Parser<'_> {
    fn peek(&self) -> u8 {
        self.s.get(self.pos).copied().unwrap_or(0)
    }

    /// Where the parser is, for messages: line and column.
    fn at(&self) -> String {
        let before = &self.s[..self.pos.min(self.s.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        format!("line {line}, column {col}")
    }

    fn err(&self, what: &str) -> anyhow::Error {
        anyhow!("{what} at {}", self.at())
    }

    /// Spaces, tabs and `#` comments; newlines too when `newline_ok`.
    fn space(&mut self, newline_ok: bool) {
        loop {
            match self.peek() {
                b' ' | b'\t' => self.pos += 1,
                b'\r' | b'\n' if newline_ok => self.pos += 1,
                b'#' => {
                    while !matches!(self.peek(), 0 | b'\r' | b'\n') {
                        self.pos += 1;
                    }
                }
                _ => return,
            }
        }
    }

    fn name(&mut self) -> Result<String> {
        let start = self.pos;
        while is_word(self.peek()) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err("expected a rule name"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }

    fn int(&mut self) -> Result<u64> {
        let start = self.pos;
        while self.peek().is_ascii_digit() {
            self.pos += 1;
        }
        std::str::from_utf8(&self.s[start..self.pos])
            .expect("digits")
            .parse()
            .map_err(|_| self.err("expected a number"))
    }

    /// `name ::= alternatives`, then a newline or the end.
    fn rule(&mut self) -> Result<(String, Node)> {
        let name = self.name()?;
        self.space(false);
        if !self.s[self.pos..].starts_with(b"::=") {
            return Err(self.err(&format!("expected `::=` after `{name}`")));
        }
        self.pos += 3;
        self.space(true);
        let body = self.alternates(false)?;
        match self.peek() {
            b'\r' => self.pos += if self.s.get(self.pos + 1) == Some(&b'\n') { 2 } else { 1 },
            b'\n' => self.pos += 1,
            0 if self.pos >= self.s.len() => {}
            _ => return Err(self.err("expected a newline or the end")),
        }
        self.space(true);
        Ok((name, body))
    }

    fn alternates(&mut self, nested: bool) -> Result<Node> {
        let mut alts = vec![self.sequence(nested)?];
        while self.peek() == b'|' {
            self.pos += 1;
            self.space(true);
            alts.push(self.sequence(nested)?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().expect("one")
        } else {
            Node::Alt(alts)
        })
    }

    fn sequence(&mut self, nested: bool) -> Result<Node> {
        let mut seq: Vec<Node> = Vec::new();
        loop {
            let c = self.peek();
            let item = match c {
                b'"' => {
                    self.pos += 1;
                    let mut chars = Vec::new();
                    while self.peek() != b'"' {
                        if self.pos >= self.s.len() {
                            return Err(self.err("unterminated string literal"));
                        }
                        chars.push(self.char()?);
                    }
                    self.pos += 1;
                    Node::Literal(chars)
                }
                b'[' => {
                    self.pos += 1;
                    let negated = self.peek() == b'^';
                    if negated {
                        self.pos += 1;
                    }
                    let mut ranges = Vec::new();
                    while self.peek() != b']' {
                        if self.pos >= self.s.len() {
                            return Err(self.err("unterminated character class"));
                        }
                        let a = self.char()?;
                        let b = if self.peek() == b'-' && !matches!(self.s.get(self.pos + 1), Some(b']') | None) {
                            self.pos += 1;
                            self.char()?
                        } else {
                            a
                        };
                        ranges.push((a, b));
                    }
                    self.pos += 1;
                    Node::Class(negated, ranges)
                }
                b'<' | b'!' => {
                    let negated = c == b'!';
                    self.pos += usize::from(negated);
                    if self.peek() != b'<' {
                        return Err(self.err("expected `<` of a token"));
                    }
                    let start = self.pos;
                    while !matches!(self.peek(), b'>' | 0) {
                        self.pos += 1;
                    }
                    if self.peek() != b'>' {
                        return Err(self.err("unterminated token"));
                    }
                    self.pos += 1;
                    let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
                    match (negated, text.strip_prefix("<[").and_then(|t| t.strip_suffix("]>"))) {
                        (false, _) => Node::Token(text),
                        (true, Some(ids)) if !ids.starts_with('^') => Node::Token(format!("<[^{ids}]>")),
                        (true, _) => {
                            return Err(
                                self.err("a negated token must be an id (`!<[123]>`): llguidance negates ids only")
                            )
                        }
                    }
                }
                b'(' => {
                    self.pos += 1;
                    self.space(true);
                    let inner = self.alternates(true)?;
                    if self.peek() != b')' {
                        return Err(self.err("expected `)`"));
                    }
                    self.pos += 1;
                    inner
                }
                b'.' => {
                    self.pos += 1;
                    Node::Any
                }
                b'*' | b'+' | b'?' | b'{' => {
                    let Some(last) = seq.pop() else {
                        return Err(self.err(&format!("`{}` with nothing before it to repeat", c as char)));
                    };
                    self.pos += 1;
                    let (min, max) = match c {
                        b'*' => (0, None),
                        b'+' => (1, None),
                        b'?' => (0, Some(1)),
                        _ => self.braces(nested)?,
                    };
                    Node::Repeat(Box::new(last), min, max)
                }
                c if is_word(c) => Node::Rule(self.name()?),
                _ => break,
            };
            seq.push(item);
            self.space(nested);
        }
        Ok(if seq.len() == 1 {
            seq.pop().expect("one")
        } else {
            Node::Seq(seq)
        })
    }

    /// `{m}`, `{m,}` or `{m,n}` after the `{`.
    fn braces(&mut self, nested: bool) -> Result<(u64, Option<u64>)> {
        self.space(nested);
        if !self.peek().is_ascii_digit() {
            return Err(self.err("expected a number after `{`"));
        }
        let min = self.int()?;
        self.space(nested);
        let max = match self.peek() {
            b'}' => Some(min),
            b',' => {
                self.pos += 1;
                self.space(nested);
                let max = if self.peek().is_ascii_digit() {
                    Some(self.int()?)
                } else {
                    None
                };
                self.space(nested);
                if self.peek() != b'}' {
                    return Err(self.err("expected `}`"));
                }
                max
            }
            _ => return Err(self.err("expected `,` or `}`")),
        };
        self.pos += 1;
        if min > MAX_REPETITION {
            return Err(self.err(&format!("more than {MAX_REPETITION} repetitions")));
        }
        if let Some(max) = max {
            if max < min {
                return Err(self.err(&format!("repetition {{{min},{max}}}: the maximum is below the minimum")));
            }
        }
        // llama.cpp: a maximum above its cap means no maximum.
        Ok((min, max.filter(|&m| m <= MAX_REPETITION)))
    }

    /// One character of a literal or class, escapes decoded.
    fn char(&mut self) -> Result<char> {
        if self.peek() == b'\\' {
            let e = self.s.get(self.pos + 1).copied().unwrap_or(0);
            self.pos += 2;
            let hex = |p: &mut Self, n: usize| -> Result<char> {
                let digits =
                    p.s.get(p.pos..p.pos + n)
                        .ok_or_else(|| p.err(&format!("expected {n} hex digits")))?;
                let v = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| u32::from_str_radix(d, 16).ok())
                    .ok_or_else(|| p.err(&format!("expected {n} hex digits")))?;
                p.pos += n;
                char::from_u32(v).ok_or_else(|| p.err(&format!("U+{v:X} is not a character")))
            };
            return match e {
                b'x' => hex(self, 2),
                b'u' => hex(self, 4),
                b'U' => hex(self, 8),
                b't' => Ok('\t'),
                b'r' => Ok('\r'),
                b'n' => Ok('\n'),
                b'\\' | b'"' | b'[' | b']' | b'-' => Ok(e as char),
                _ => {
                    self.pos -= 2;
                    Err(self.err("unknown escape"))
                }
            };
        }
        let rest = std::str::from_utf8(&self.s[self.pos..]).unwrap_or_else(|e| {
            std::str::from_utf8(&self.s[self.pos..self.pos + e.valid_up_to()]).expect("valid prefix")
        });
        let c = rest.chars().next().ok_or_else(|| self.err("invalid UTF-8"))?;
        self.pos += c.len_utf8();
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_each_construct() {
        let g = "root ::= \"a\\\"\" [^\"\\\\x-z] . (item | \"\")* item{2,3} item{4} item{1,}\nitem ::= | \"q\" # c\n";
        let lark = to_lark(g).unwrap();
        assert_eq!(
            lark,
            "start: r0-root\n\
             r0-root: \"a\" \"\\\"\" /[^\\x{22}\\x{5c}x-z]/ /(?s:.)/ (r1-item)* r1-item{2,3} r1-item{4} r1-item+\n\
             r1-item: (\"q\")?\n"
        );
    }

    #[test]
    fn detects_gbnf() {
        assert!(is_gbnf("root ::= \"x\""));
        assert!(is_gbnf("# c\n  value  ::= [0-9]+\n"));
        assert!(!is_gbnf("start: \"x\" /::=/"));
    }

    #[test]
    fn refuses_what_llama_cpp_refuses() {
        for (g, want) in [
            ("item ::= \"x\"\n", "no `root` rule"),
            ("root ::= item\n", "undefined rule `item`"),
            ("root ::= \"x\n", "unterminated string"),
            ("root ::= [a-\n", "unterminated character class"),
            ("root ::= * \"x\"\n", "nothing before it"),
            ("root ::= \"\\q\"\n", "unknown escape at line 1, column 11"),
            ("root = \"x\"\n", "expected `::=`"),
            ("root ::= \"x\" )\n", "expected a newline"),
            ("root ::= \"x\"{3,2}\n", "below the minimum"),
            ("root ::= !<|end|>\n", "negated token"),
        ] {
            let e = to_lark(g).unwrap_err().to_string();
            assert!(e.contains(want), "{g:?}: {e}");
        }
    }
}
