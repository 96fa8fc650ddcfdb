//! Element and block types of weight tensors, numbered as in GGUF (`ggml_type`).

use std::fmt;

/// A tensor element type. Block-quantized types store `block_len()` weights in `block_bytes()` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
}

/// Names of GGUF type ids bushu knows about but cannot compute with, for error messages.
const OTHER_GGML_TYPES: &[(u32, &str)] = &[
    (4, "Q4_2 (removed)"),
    (5, "Q4_3 (removed)"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

impl DType {
    /// All types with their GGUF ids.
    const TABLE: &'static [(DType, u32, &'static str, usize, usize)] = &[
        // (type, ggml id, name, elements per block, bytes per block)
        (DType::F32, 0, "F32", 1, 4),
        (DType::F16, 1, "F16", 1, 2),
        (DType::Q4_0, 2, "Q4_0", 32, 18),
        (DType::Q4_1, 3, "Q4_1", 32, 20),
        (DType::Q5_0, 6, "Q5_0", 32, 22),
        (DType::Q5_1, 7, "Q5_1", 32, 24),
        (DType::Q8_0, 8, "Q8_0", 32, 34),
        (DType::Q8_1, 9, "Q8_1", 32, 36),
        (DType::Q2K, 10, "Q2_K", 256, 84),
        (DType::Q3K, 11, "Q3_K", 256, 110),
        (DType::Q4K, 12, "Q4_K", 256, 144),
        (DType::Q5K, 13, "Q5_K", 256, 176),
        (DType::Q6K, 14, "Q6_K", 256, 210),
        (DType::Q8K, 15, "Q8_K", 256, 292),
        (DType::I8, 24, "I8", 1, 1),
        (DType::I16, 25, "I16", 1, 2),
        (DType::I32, 26, "I32", 1, 4),
        (DType::I64, 27, "I64", 1, 8),
        (DType::F64, 28, "F64", 1, 8),
        (DType::BF16, 30, "BF16", 1, 2),
    ];

    fn row(self) -> &'static (DType, u32, &'static str, usize, usize) {
        DType::TABLE
            .iter()
            .find(|r| r.0 == self)
            .expect("every DType is in TABLE")
    }

    /// The type with GGUF id `id`; the error names the type when it is a known but unsupported one.
    pub fn from_ggml_id(id: u32) -> Result<DType, String> {
        if let Some(r) = DType::TABLE.iter().find(|r| r.1 == id) {
            return Ok(r.0);
        }
        match OTHER_GGML_TYPES.iter().find(|r| r.0 == id) {
            Some((_, name)) => Err(format!("tensor type {name} (ggml type {id}) is not supported")),
            None => Err(format!("unknown ggml tensor type id {id}")),
        }
    }

    pub fn ggml_id(self) -> u32 {
        self.row().1
    }

    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Parses a name such as `q8_0`, `Q4_K`, `f16` (case-insensitive).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::TABLE
            .iter()
            .find(|r| r.2.eq_ignore_ascii_case(name))
            .map(|r| r.0)
    }

    /// Number of elements in one block (1 for plain types).
    pub fn block_len(self) -> usize {
        self.row().3
    }

    /// Bytes of one block.
    pub fn block_bytes(self) -> usize {
        self.row().4
    }

    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes taken by `n` elements; `None` if `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
