//! GGUF metadata arrays: strings and numbers are read packed (`Value::Strings`, `Value::Numbers`) and written
//! back byte for byte; arrays built value by value read the same; invalid UTF-8 is replaced; truncated files
//! and impossible counts are errors, never panics or huge allocations.

use bushu::formats::gguf::{Gguf, NumType, Numbers, StrList, Value};
use bushu::formats::gguf_writer::GgufWriter;
use bushu::formats::Storage;
use std::sync::Arc;

fn parse(bytes: &[u8]) -> anyhow::Result<Gguf> {
    Gguf::parse(Arc::new(Storage::Owned(bytes.to_vec())))
}

fn image(kv: Vec<(&str, Value)>) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.set(k, v);
    }
    w.to_bytes()
}

/// A file of one key holding an array of `n` elements of type `ety` followed by `body`.
fn raw_array(ety: u32, n: u64, body: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // keys
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'a');
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&ety.to_le_bytes());
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(body);
    b
}

fn err(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn arrays_read_packed_and_write_back_identically() {
    let tokens = ["<unk>", "", "▁the", "<0x0A>"];
    let kv = vec![
        (
            "tok",
            Value::Array(tokens.iter().map(|t| Value::String((*t).into())).collect()),
        ),
        (
            "scores",
            Value::Array(vec![Value::F32(-1.5), Value::F32(0.0), Value::F32(2.25)]),
        ),
        (
            "types",
            Value::Array(vec![Value::I32(2), Value::I32(1), Value::I32(-6)]),
        ),
        ("u64s", Value::Array(vec![Value::U64(u64::MAX), Value::U64(7)])),
        ("flags", Value::Array(vec![Value::Bool(true), Value::Bool(false)])),
        (
            "nested",
            Value::Array(vec![
                Value::Array(vec![Value::U16(1), Value::U16(2)]),
                Value::Array(vec![Value::String("x".into())]),
            ]),
        ),
        ("name", Value::String("tiny".into())),
    ];
    let g = parse(&image(kv.clone())).unwrap();
    let list: StrList = tokens.iter().collect();
    assert_eq!(g.get("tok"), Some(&Value::Strings(list.clone())));
    assert_eq!(*g.get_strings("tok").unwrap(), list);
    assert_eq!(g.get_f32s("scores").unwrap(), [-1.5, 0.0, 2.25]);
    assert_eq!(g.get_i64s("types").unwrap(), [2, 1, -6]);
    assert_eq!(g.get_i64s("u64s").unwrap(), [-1, 7]);
    assert_eq!(g.get_i64s("flags").unwrap(), [1, 0]);
    let Some(Value::Numbers(scores)) = g.get("scores") else {
        panic!("scores: {:?}", g.get("scores"))
    };
    assert_eq!(
        (scores.ty(), scores.len(), scores.get(2)),
        (NumType::F32, 3, Some(Value::F32(2.25)))
    );
    assert_eq!(scores.get(3), None);
    let nested = g.get("nested").and_then(Value::as_array).unwrap();
    assert_eq!(
        nested[0],
        Value::Numbers(Numbers::from_le_bytes(NumType::U16, vec![1, 0, 2, 0]).unwrap())
    );
    assert_eq!(nested[1], Value::Strings(["x"].into_iter().collect()));
    assert_eq!(g.get("tok").unwrap().summary(), "[4 values]");
    assert_eq!(g.get_strings("scores"), None);
    assert_eq!(g.get_f32s("tok"), None);
    assert_eq!(g.get_f32s("name"), None);

    // Packed values write the same bytes as the value-by-value ones they were read from (in key order, as
    // the parsed metadata is).
    let packed = image(g.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect());
    let mut sorted = kv;
    sorted.sort_by_key(|(k, _)| *k);
    assert_eq!(packed, image(sorted));
    assert_eq!(parse(&packed).unwrap().metadata, g.metadata);
}

#[test]
fn invalid_utf8_is_replaced_per_element() {
    let mut body = Vec::new();
    for s in [&b"ok"[..], b"a\xffb", b""] {
        body.extend_from_slice(&(s.len() as u64).to_le_bytes());
        body.extend_from_slice(s);
    }
    let g = parse(&raw_array(8, 3, &body)).unwrap();
    let list = g.get_strings("a").unwrap();
    assert_eq!(list.iter().collect::<Vec<_>>(), ["ok", "a\u{fffd}b", ""]);
}

#[test]
fn truncated_files_and_impossible_counts_are_errors() {
    let bytes = image(vec![
        ("tok", Value::Strings(["a", "bc", "▁d"].into_iter().collect())),
        ("scores", Value::Array(vec![Value::F32(1.0), Value::F32(2.0)])),
        ("nested", Value::Array(vec![Value::Array(vec![Value::U8(1)])])),
    ]);
    for cut in 0..bytes.len() {
        let e = err(&bytes[..cut]);
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
    // Counts no file could hold fail before anything is reserved.
    for ety in [0, 6, 8, 9, 12] {
        for n in [u64::MAX, 1 << 40, 17] {
            let e = err(&raw_array(ety, n, &[0; 16]));
            assert!(e.contains("truncated"), "type {ety}, {n} elements: {e}");
        }
    }
    // A string whose length runs past the end.
    let e = err(&raw_array(8, 1, &u64::MAX.to_le_bytes()));
    assert!(e.contains("truncated"), "{e}");
    let e = err(&raw_array(13, 1, &[0; 16]));
    assert!(e.contains("unknown metadata value type 13"), "{e}");
    // An unknown element type is refused before its count is looked at (a huge count of 1-byte
    // elements of it once reserved 48 bytes per element and aborted).
    let e = err(&raw_array(13, 3_000_000, &vec![0; 4 << 20]));
    assert!(e.contains("unknown metadata value type 13"), "{e}");
    // Arrays of empty arrays fit the file (12 bytes each) but are bounded: held value by value they
    // would take four times the file in memory.
    let mut empty = 0u32.to_le_bytes().to_vec();
    empty.extend_from_slice(&0u64.to_le_bytes());
    let n = 70_000;
    let e = err(&raw_array(9, n, &empty.repeat(n as usize)));
    assert!(e.contains("70000 arrays"), "{e}");
    let ok = parse(&raw_array(9, 1000, &empty.repeat(1000))).expect("1000 empty arrays");
    assert_eq!(ok.get("a").and_then(Value::array_len), Some(1000));
}
