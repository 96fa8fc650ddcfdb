//! Weights repacked for the int8-activation ("fast") products: rows interleaved by groups of eight, so
//! that one 256-bit vector holds four codes of each of eight rows and an integer dot product yields the
//! eight rows' sums in the eight lanes of one register — no horizontal sums, one vector of scales per
//! block for eight rows, and one sequential stream of bytes per group instead of eight (llama.cpp calls
//! this "repacking", its `q4_0_8x8`). The packed copy has the same size as the original rows.
//!
//! Layout of one group of [`GROUP`] rows: its blocks in order, each a record of
//! - the eight rows' `d` (f16), then for Q4_1 their `m` (f16); for Q4_K `d`, `dmin` (f16) and the
//!   6-bit sub-block scales and minimums unpacked to bytes (`[sub-block][row]`);
//! - the codes in units of 32 bytes, each unit four consecutive code bytes of every row (`[unit][row]
//!   [4]`): Q8_0 bytes `4k..4k+4` for unit `k`; Q4_0/Q4_1 nibble bytes `4k..4k+4` (low nibbles: weights
//!   `4k..4k+4`, high: `16+4k..`); Q4_K bytes `32j+4k..` of sub-block pair `j` (low: sub-block `2j`).
//!
//! Q5_0 keeps its 22 bytes per row and block: `d`, its nibbles as Q4_0's, and its 32 top bits
//! rearranged so that the kernels assemble five-bit codes as Q5_K's ([`Q5_0_Q`]). (It was packed as
//! Q8_0 before, 34 bytes: 1.55x the bytes to read in decode, where reading is the cost.)
//!
//! Rows past the last whole group are not packed; products run them with the row-major kernels.
//!
//! F16 and BF16 matrices (f32 activations, every precision) pack by groups of [`FLOAT_GROUP`] = 16 rows,
//! column-major within the group: record `k` (32 bytes) holds weight `k` of the sixteen rows, so one
//! 512-bit conversion (or two 256-bit ones) yields column `k` of the group and the products are outer
//! products — weights times each token's activation `k` broadcast — with no horizontal sums
//! (`x86::packed_float`). Packed only where such kernels exist (x86-64 with AVX2 or AVX-512).
//!
//! For bf16 products on hosts with AVX512_BF16 ([`crate::bf16`]: BF16 weights at `Fast`, F16 and BF16
//! at `Bf16`) a second layout: the same groups of sixteen rows, each record (64 bytes) a pair
//! of columns `2j, 2j + 1` rounded to bf16, row `i`'s two weights in 32-bit lane `i` (even column in
//! the low half), as `vdpbf16ps` takes them (`x86::packed_bf16`); an odd last column is paired with 0.

use crate::buffer::ZeroedBuf;
use crate::dtype::DType;
use crate::matmul::QMatrix;
use crate::quants::k_quants::{pack_q3k_scales, q3k_scale, scale_min_k4, unpack_q3k, unpack_q5k, unpack_q6k};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Rows interleaved in a group.
pub const GROUP: usize = 8;

/// Rows in a group of a packed F16/BF16 matrix.
pub const FLOAT_GROUP: usize = 16;

/// Whether `dtype` packs as a float matrix (groups of [`FLOAT_GROUP`] rows).
pub fn is_float_packed(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// A packed copy of the first `groups * 8` rows of a matrix.
#[derive(Debug)]
pub struct Packed {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// Bytes of one group's record for one weight block.
    pub rec: usize,
    /// F16/BF16 weights as bf16 column pairs ([`Packed::new_bf16_pairs`]); `dtype` is then BF16.
    pub pairs: bool,
    data: ZeroedBuf,
}

/// How a block format is packed: bytes of its per-row header in the original block, and of the
/// header fields repacked (`d` and friends) per group record.
struct Layout {
    /// Original bytes before the codes.
    head: usize,
    /// Bytes of codes per row and block.
    codes: usize,
    /// Record bytes of a group (header + codes).
    rec: usize,
}

fn layout(dtype: DType) -> Option<Layout> {
    Some(match dtype {
        DType::Q8_0 => Layout {
            head: 2,
            codes: 32,
            rec: GROUP * 34,
        },
        DType::Q4_0 => Layout {
            head: 2,
            codes: 16,
            rec: GROUP * 18,
        },
        // d, then one Q5_K sub-block's vectors ([`Q5_0_Q`]).
        DType::Q5_0 => Layout {
            head: 0,
            codes: 20,
            rec: Q5_0_Q + GROUP * 20,
        },
        DType::Q4_1 => Layout {
            head: 4,
            codes: 16,
            rec: GROUP * 20,
        },
        // d, dmin (f16 x 8 each), scales and mins (8 sub-blocks x 8 rows bytes each), codes.
        DType::Q4K => Layout {
            head: 16,
            codes: 128,
            rec: 32 + 128 + GROUP * 128,
        },
        // d, scales (16 x 8 rows), the 6-bit codes in three vectors per four units
        // ([`Q6K_Q`]): the file's size.
        DType::Q6K => Layout {
            head: 0,
            codes: 192,
            rec: 16 + 128 + GROUP * 192,
        },
        // Q4_K's header (d, dmin, scales and minimums as bytes), then the 5-bit codes in five vectors
        // per sub-block ([`Q5K_Q`]): 180 bytes per row and block (the file's 176, scales unpacked).
        DType::Q5K => Layout {
            head: 0,
            codes: 160,
            rec: Q5K_Q + GROUP * 160,
        },
        // d, dmin, the scale/minimum bytes (16 x 8 rows) as stored, the 2-bit code bytes: the file's
        // bytes, interleaved.
        DType::Q2K => Layout {
            head: 0,
            codes: 64,
            rec: Q2K_Q + GROUP * 64,
        },
        // d, the 6-bit scales unpacked to signed bytes (16 x 8 rows), the 3-bit codes as nibbles.
        DType::Q3K => Layout {
            head: 0,
            codes: 128,
            rec: Q3K_Q + GROUP * 128,
        },
        _ => return None,
    })
}

/// Whether matrices of `dtype` can be packed (F16/BF16: only where the active SIMD level has the packed
/// float kernels, since the copy costs as much memory as the matrix).
pub fn packable(dtype: DType) -> bool {
    if is_float_packed(dtype) {
        return float_kernels();
    }
    layout(dtype).is_some()
}

/// Whether the active SIMD level runs packed F16/BF16 products.
fn float_kernels() -> bool {
    use crate::simd::Simd;
    cfg!(target_arch = "x86_64") && matches!(Simd::active(), Simd::Avx2 | Simd::Avx512)
}

/// Where a matrix's packed copy lives once made. By default the first product that uses it (fast or wide;
/// any for F16/BF16) makes it (and waits
/// for it); a [`defer`](PackSlot::defer)red slot is filled by someone else (a background packer, with
/// [`fill_serial`](PackSlot::fill_serial)) and products use the row-major kernels until the slot is
/// [`release`](PackSlot::release)d — not merely until it is filled, so that which kernel a product
/// uses never depends on how far the packer has got.
#[derive(Debug, Default)]
pub struct PackSlot {
    cell: OnceLock<Option<Packed>>,
    /// The bf16 column pairs of an F16/BF16 matrix, for the products where [`uses_pairs`].
    pairs: OnceLock<Option<Packed>>,
    deferred: AtomicBool,
}

impl PackSlot {
    pub fn new() -> PackSlot {
        PackSlot::default()
    }

    /// Whether the slot has been filled (with a packed copy, or with "this matrix has none").
    pub fn is_ready(&self) -> bool {
        self.cell.get().is_some()
    }

    /// The bf16 pairs copy, if made.
    pub fn pairs(&self) -> Option<&Packed> {
        self.pairs.get()?.as_ref()
    }

    /// The packed copy, if made.
    pub fn get(&self) -> Option<&Packed> {
        self.cell.get()?.as_ref()
    }

    /// From now on products use the row-major kernels and do not make the copy themselves, until
    /// [`PackSlot::release`].
    pub fn defer(&self) {
        self.deferred.store(true, Ordering::Release);
    }

    /// Ends [`PackSlot::defer`]: products use the copy (made on first use if no one filled it).
    pub fn release(&self) {
        self.deferred.store(false, Ordering::Release);
    }

    /// Makes the copy of `w` that products at `precision` use on this thread alone (no pool), unless
    /// made already.
    pub fn fill_serial(&self, w: &QMatrix, precision: crate::Precision) {
        if uses_pairs(w.dtype, precision, crate::Simd::active()) {
            self.pairs.get_or_init(|| Packed::build_bf16_pairs(w, false));
        } else {
            self.cell.get_or_init(|| Packed::build(w, false));
        }
    }

    /// The copy a product of `w` should use: made now (on the pool) unless deferred.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn for_product(&self, w: &QMatrix) -> Option<&Packed> {
        self.made(&self.cell, || Packed::new(w))
    }

    /// The bf16 pairs copy for a bf16 product of the F16/BF16 matrix `w`: made now (on the pool) unless
    /// deferred.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn for_pairs(&self, w: &QMatrix) -> Option<&Packed> {
        self.made(&self.pairs, || Packed::new_bf16_pairs(w))
    }

    /// `cell`'s copy, made now by `make` unless made already — or `None` while deferred.
    fn made<'a>(
        &'a self,
        cell: &'a OnceLock<Option<Packed>>,
        make: impl FnOnce() -> Option<Packed>,
    ) -> Option<&'a Packed> {
        if self.deferred.load(Ordering::Acquire) {
            return None;
        }
        cell.get_or_init(make).as_ref()
    }
}

/// Fills `data`, whole groups of `per_group` bytes, with `group(g, bytes)`: on the pool when `parallel`
/// (packing is a copy, bound by page faults and memory bandwidth), else on this thread.
fn fill_groups(data: &mut [u8], per_group: usize, parallel: bool, group: &(dyn Fn(usize, &mut [u8]) + Sync)) {
    if parallel {
        crate::pool::for_each_chunk_mut(data, per_group, group);
    } else {
        data.chunks_exact_mut(per_group)
            .enumerate()
            .for_each(|(g, out)| group(g, out));
    }
}

/// Whether products of `dtype` at `precision` on `level` use the bf16 pairs copy: BF16 weights at
/// `Fast` (exact weights, bf16 activations: llama.cpp's method) and F16/BF16 at `Bf16`, where the
/// level has the bf16 kernels.
pub fn uses_pairs(dtype: DType, precision: crate::Precision, level: crate::Simd) -> bool {
    use crate::Precision;
    let rounds = match dtype {
        DType::BF16 => matches!(precision, Precision::Fast | Precision::Bf16),
        DType::F16 => precision == Precision::Bf16,
        _ => false,
    };
    rounds && crate::bf16::at(level)
}

impl Packed {
    /// Packs the whole groups of rows of `w` (in parallel on the pool); `None` for types without a
    /// packed layout or matrices with fewer than eight rows.
    pub fn new(w: &QMatrix) -> Option<Packed> {
        Packed::build(w, true)
    }

    fn build(w: &QMatrix, parallel: bool) -> Option<Packed> {
        if is_float_packed(w.dtype) {
            return if float_kernels() {
                Packed::build_float(w, parallel)
            } else {
                None
            };
        }
        let l = layout(w.dtype)?;
        let groups = w.rows / GROUP;
        if groups == 0 {
            return None;
        }
        let nb = w.cols / w.dtype.block_len();
        let (bb, rb) = (w.dtype.block_bytes(), w.row_bytes());
        let mut data = ZeroedBuf::zeroed(groups * nb * l.rec);
        // Groups in parallel: packing is a copy, bound by page faults and memory bandwidth.
        let group = |g: usize, out: &mut [u8]| {
            let rows: [&[u8]; GROUP] = std::array::from_fn(|r| &w.data[(g * GROUP + r) * rb..][..rb]);
            for (b, rec) in out.chunks_exact_mut(l.rec).enumerate() {
                pack_record(w.dtype, &l, rec, |r| &rows[r][b * bb..(b + 1) * bb]);
            }
        };
        fill_groups(&mut data, nb * l.rec, parallel, &group);
        Some(Packed {
            dtype: w.dtype,
            rows: groups * GROUP,
            cols: w.cols,
            rec: l.rec,
            pairs: false,
            data,
        })
    }

    /// An F16/BF16 matrix's whole groups of sixteen rows, each `cols` records of the sixteen rows' weight
    /// `k` (2 bytes each, as stored).
    fn build_float(w: &QMatrix, parallel: bool) -> Option<Packed> {
        let groups = w.rows / FLOAT_GROUP;
        if groups == 0 {
            return None;
        }
        let (cols, rb) = (w.cols, w.row_bytes());
        let rec = 2 * FLOAT_GROUP;
        let mut data = ZeroedBuf::zeroed(groups * cols * rec);
        let group = |g: usize, out: &mut [u8]| {
            let rows: [&[u8]; FLOAT_GROUP] = std::array::from_fn(|r| &w.data[(g * FLOAT_GROUP + r) * rb..][..rb]);
            for (k, rec) in out.chunks_exact_mut(rec).enumerate() {
                for (r, row) in rows.iter().enumerate() {
                    rec[2 * r..2 * r + 2].copy_from_slice(&row[2 * k..2 * k + 2]);
                }
            }
        };
        fill_groups(&mut data, cols * rec, parallel, &group);
        Some(Packed {
            dtype: w.dtype,
            rows: groups * FLOAT_GROUP,
            cols,
            rec,
            pairs: false,
            data,
        })
    }

    /// An F16/BF16 matrix's whole groups of sixteen rows as bf16 column pairs (the module's second
    /// float layout; in parallel on the pool); `None` for other types or fewer than sixteen rows.
    pub fn new_bf16_pairs(w: &QMatrix) -> Option<Packed> {
        Packed::build_bf16_pairs(w, true)
    }

    fn build_bf16_pairs(w: &QMatrix, parallel: bool) -> Option<Packed> {
        let groups = w.rows / FLOAT_GROUP;
        if !is_float_packed(w.dtype) || groups == 0 {
            return None;
        }
        let cols = w.cols;
        let rec = 4 * FLOAT_GROUP;
        let records = cols.div_ceil(2);
        let mut data = ZeroedBuf::zeroed(groups * records * rec);
        let group = |g: usize, out: &mut [u8]| {
            let mut row = vec![0.0f32; cols];
            for r in 0..FLOAT_GROUP {
                w.dequantize_row(g * FLOAT_GROUP + r, &mut row);
                for (k, &v) in row.iter().enumerate() {
                    let at = (k / 2) * rec + 4 * r + 2 * (k % 2);
                    out[at..at + 2].copy_from_slice(&crate::bf16::round(v).to_le_bytes());
                }
            }
        };
        fill_groups(&mut data, records * rec, parallel, &group);
        Some(Packed {
            dtype: DType::BF16,
            rows: groups * FLOAT_GROUP,
            cols,
            rec,
            pairs: true,
            data,
        })
    }

    /// Rows in one group: [`FLOAT_GROUP`] for F16/BF16, else [`GROUP`].
    pub fn group_rows(&self) -> usize {
        if is_float_packed(self.dtype) {
            FLOAT_GROUP
        } else {
            GROUP
        }
    }

    /// Records of one group: `cols / block_len`, or `cols / 2` rounded up for bf16 pairs.
    pub fn records(&self) -> usize {
        if self.pairs {
            self.cols.div_ceil(2)
        } else {
            self.cols / self.dtype.block_len()
        }
    }

    /// Records of group `g`.
    pub fn group(&self, g: usize) -> &[u8] {
        let n = self.records() * self.rec;
        &self.data[g * n..(g + 1) * n]
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The original bytes of packed row `r` (the inverse of packing; tests) — bf16 for pairs.
    pub fn unpack_row(&self, r: usize) -> Vec<u8> {
        if self.pairs {
            let (g, i) = (r / FLOAT_GROUP, r % FLOAT_GROUP);
            let mut row: Vec<u8> = self
                .group(g)
                .chunks_exact(self.rec)
                .flat_map(|rec| rec[4 * i..4 * i + 4].to_vec())
                .collect();
            row.truncate(2 * self.cols);
            return row;
        }
        if is_float_packed(self.dtype) {
            let (g, i) = (r / FLOAT_GROUP, r % FLOAT_GROUP);
            return self
                .group(g)
                .chunks_exact(self.rec)
                .flat_map(|rec| [rec[2 * i], rec[2 * i + 1]])
                .collect();
        }
        let l = layout(self.dtype).expect("packed type");
        let (g, i) = (r / GROUP, r % GROUP);
        let mut row = Vec::new();
        for rec in self.group(g).chunks_exact(self.rec) {
            row.extend(unpack_block(self.dtype, &l, rec, i));
        }
        row
    }
}

/// Byte offset of row `r`'s 4-byte share of code unit `u` in a record whose codes start at `at`.
fn unit(at: usize, u: usize, r: usize) -> usize {
    at + u * 4 * GROUP + r * 4
}

fn pack_record<'a>(dtype: DType, l: &Layout, rec: &mut [u8], block: impl Fn(usize) -> &'a [u8]) {
    let codes_at = l.rec - GROUP * l.codes;
    match dtype {
        DType::Q5_0 => return (0..GROUP).for_each(|r| pack_q5_0(rec, r, block(r))),
        DType::Q6K => return (0..GROUP).for_each(|r| pack_q6k(rec, r, block(r))),
        DType::Q2K => return (0..GROUP).for_each(|r| pack_q2k(rec, r, block(r))),
        DType::Q5K => return (0..GROUP).for_each(|r| pack_q5k(rec, r, block(r))),
        DType::Q3K => return (0..GROUP).for_each(|r| pack_q3k(rec, r, block(r))),
        _ => {}
    }
    assert!(rec.len() == l.rec);
    for r in 0..GROUP {
        let b = block(r);
        assert!(b.len() >= l.head + l.codes);
        match dtype {
            DType::Q4K => {
                rec[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
                rec[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&b[2..4]);
                for s in 0..8 {
                    let (sc, m) = scale_min_k4(s, &b[4..16]);
                    rec[32 + s * GROUP + r] = sc;
                    rec[96 + s * GROUP + r] = m;
                }
            }
            _ => {
                // d (and m) of each row, one f16 field after the other.
                for f in 0..l.head / 2 {
                    rec[f * 2 * GROUP + 2 * r..][..2].copy_from_slice(&b[2 * f..2 * f + 2]);
                }
            }
        }
    }
    // The codes, four bytes at a time, unit by unit: the eight rows' words of a unit are one contiguous
    // 32-byte store (the hot loop of packing).
    let src: [*const u8; GROUP] = std::array::from_fn(|r| block(r)[l.head..].as_ptr());
    let dst = rec.as_mut_ptr();
    for u in 0..l.codes / 4 {
        for (r, src) in src.iter().enumerate() {
            // SAFETY: in bounds by the asserts above (`4 * u + 4 <= l.codes` bytes of each block's codes,
            // `unit(codes_at, u, r) + 4 <= l.rec`).
            unsafe {
                let v = std::ptr::read_unaligned(src.add(4 * u) as *const u32);
                std::ptr::write_unaligned(dst.add(unit(codes_at, u, r)) as *mut u32, v);
            }
        }
    }
}

fn unpack_block(dtype: DType, l: &Layout, rec: &[u8], r: usize) -> Vec<u8> {
    let codes_at = l.rec - GROUP * l.codes;
    match dtype {
        DType::Q5_0 => return unpack_q5_0_row(rec, r),
        DType::Q6K => return unpack_q6k_row(rec, r),
        DType::Q2K => return unpack_q2k_row(rec, r),
        DType::Q5K => return unpack_q5k_row(rec, r),
        DType::Q3K => return unpack_q3k_row(rec, r),
        _ => {}
    }
    let mut b = vec![0u8; l.head];
    match dtype {
        DType::Q4K => {
            b[0..2].copy_from_slice(&rec[2 * r..2 * r + 2]);
            b[2..4].copy_from_slice(&rec[16 + 2 * r..16 + 2 * r + 2]);
            let sc: Vec<u8> = (0..8).map(|s| rec[32 + s * GROUP + r]).collect();
            let m: Vec<u8> = (0..8).map(|s| rec[96 + s * GROUP + r]).collect();
            b[4..16].copy_from_slice(&crate::quants::k_quants::pack_scale_min_k4(&sc, &m));
        }
        _ => {
            for f in 0..l.head / 2 {
                b[2 * f..2 * f + 2].copy_from_slice(&rec[f * 2 * GROUP + 2 * r..][..2]);
            }
        }
    }
    for u in 0..l.codes / 4 {
        b.extend_from_slice(&rec[unit(codes_at, u, r)..][..4]);
    }
    b
}

/// Where Q5_0's codes start in a record (after the eight rows' `d`): the five vectors of one Q5_K
/// sub-block ([`Q5K_Q`]'s layout): `N_m` (`m` in 0..4) is the file's nibble bytes `4m..4m + 4` (low:
/// weights `4m..4m + 4`, high: `16 + 4m..`), `H` the top bit of weight `4k + i` at bit `k` of byte `i`.
pub const Q5_0_Q: usize = 2 * GROUP;

fn pack_q5_0(rec: &mut [u8], r: usize, b: &[u8]) {
    rec[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
    let mut c = [0u8; 32];
    crate::quants::unpack_q5_0(b, &mut c);
    put_five_bits(rec, Q5_0_Q, r, &c);
}

/// Row `r`'s original Q5_0 block from a packed record.
fn unpack_q5_0_row(rec: &[u8], r: usize) -> Vec<u8> {
    let mut b = vec![0u8; 22];
    b[0..2].copy_from_slice(&rec[2 * r..2 * r + 2]);
    let c = five_bits(rec, Q5_0_Q, r);
    let qh: u32 = (0..32).map(|j| ((c[j] >> 4) as u32) << j).sum();
    b[2..6].copy_from_slice(&qh.to_le_bytes());
    for j in 0..16 {
        b[6 + j] = (c[j] & 15) | (c[j + 16] & 15) << 4;
    }
    b
}

/// Writes row `r`'s 32 five-bit codes `c` (weight order) as one sub-block's five vectors from `at`
/// ([`Q5K_Q`]'s layout, Q5_0's too).
fn put_five_bits(rec: &mut [u8], at: usize, r: usize, c: &[u8; 32]) {
    for i in 0..4 {
        // Code `i` of unit `k` is `c[4k + i]`.
        for m in 0..4 {
            rec[at + 32 * m + 4 * r + i] = (c[4 * m + i] & 15) | (c[4 * (m + 4) + i] & 15) << 4;
        }
        rec[at + 128 + 4 * r + i] = (0..8).map(|k| (c[4 * k + i] >> 4) << k).sum();
    }
}

/// Row `r`'s 32 five-bit codes from the five vectors at `at` (the inverse of [`put_five_bits`]).
fn five_bits(rec: &[u8], at: usize, r: usize) -> [u8; 32] {
    std::array::from_fn(|w| {
        let (k, i) = (w / 4, w % 4);
        let n = rec[at + 32 * (k % 4) + 4 * r + i] >> (4 * (k / 4)) & 15;
        n | (rec[at + 128 + 4 * r + i] >> k & 1) << 4
    })
}

/// Where Q6_K's codes start in a record. Each half sub-block (16 weights, one scale) of a 32-weight
/// group is four units `a, b, c, e` (`4h..4h + 4`) held in three 32-byte vectors laid out as units
/// (row `r`'s four bytes at `4r`). With `q` a 6-bit code and `q''` its top two bits:
/// - `X1 = q_a | q_b'' << 6`, `X2 = q_c | q_e'' << 6`, `Y = (q_b & 15) | (q_e & 15) << 4`,
///
/// so `q_a = X1 & 63`, `q_c = X2 & 63`, `q_b = (Y & 15) | (X1 >> 2 & 48)`, `q_e = (Y >> 4 & 15) |
/// (X2 >> 2 & 48)`: eleven vector operations give four units of codes (0..=63) from 96 bytes, the
/// file's six bits per weight. Group `g`, half `h` starts at `Q6K_Q + 192 g + 96 h`.
pub const Q6K_Q: usize = 16 + 128;

/// Byte offset of row `r`'s four bytes of vector `v` (X1, X2, Y) of group `g`, half `h`.
fn q6k_at(g: usize, h: usize, v: usize, r: usize) -> usize {
    Q6K_Q + 192 * g + 96 * h + 32 * v + 4 * r
}

fn pack_q6k(rec: &mut [u8], r: usize, b: &[u8]) {
    rec[2 * r..2 * r + 2].copy_from_slice(&b[208..210]);
    for i in 0..16 {
        rec[16 + i * GROUP + r] = b[192 + i];
    }
    let mut c = [0u8; 32];
    for g in 0..8 {
        unpack_q6k(b, g, &mut c);
        for h in 0..2 {
            // Codes `i` of units a, b, c, e (4 codes each).
            let q = |k: usize, i: usize| c[16 * h + 4 * k + i];
            for i in 0..4 {
                rec[q6k_at(g, h, 0, r) + i] = q(0, i) | (q(1, i) >> 4) << 6;
                rec[q6k_at(g, h, 1, r) + i] = q(2, i) | (q(3, i) >> 4) << 6;
                rec[q6k_at(g, h, 2, r) + i] = (q(1, i) & 15) | (q(3, i) & 15) << 4;
            }
        }
    }
}

/// Row `r`'s original Q6_K block from a packed record.
fn unpack_q6k_row(rec: &[u8], r: usize) -> Vec<u8> {
    let mut b = vec![0u8; 210];
    b[208..210].copy_from_slice(&rec[2 * r..2 * r + 2]);
    for i in 0..16 {
        b[192 + i] = rec[16 + i * GROUP + r];
    }
    for g in 0..8 {
        for w in 0..32 {
            let (h, k, i) = (w / 16, w / 4 % 4, w % 4);
            let v = |v: usize| rec[q6k_at(g, h, v, r) + i];
            let q = match k {
                0 => v(0) & 63,
                1 => (v(2) & 15) | (v(0) >> 6) << 4,
                2 => v(1) & 63,
                _ => (v(2) >> 4) | (v(1) >> 6) << 4,
            };
            let (lo, hi) = (q & 15, q >> 4);
            // Q6_K's own layout: sub-block g = 4n + m of half n.
            let (n, m) = (g / 4, g % 4);
            b[64 * n + 32 * (m % 2) + w] |= lo << (4 * (m / 2));
            b[128 + 32 * n + w] |= hi << (2 * m);
        }
    }
    b
}

/// Where Q2_K's code units start in a record (after `d`, `dmin` and the scale bytes): unit `u` holds
/// bytes `4u..4u + 4` of each row's 64 code bytes, that is, for half `n = u / 8`, weights
/// `128n + 32s + 4(u % 8)..+4` at bits `2s`.
pub const Q2K_Q: usize = 32 + 128;

fn pack_q2k(rec: &mut [u8], r: usize, b: &[u8]) {
    rec[2 * r..2 * r + 2].copy_from_slice(&b[80..82]);
    rec[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&b[82..84]);
    for i in 0..16 {
        rec[32 + i * GROUP + r] = b[i];
    }
    for u in 0..16 {
        rec[unit(Q2K_Q, u, r)..][..4].copy_from_slice(&b[16 + 4 * u..][..4]);
    }
}

fn unpack_q2k_row(rec: &[u8], r: usize) -> Vec<u8> {
    let mut b = vec![0u8; 84];
    b[80..82].copy_from_slice(&rec[2 * r..2 * r + 2]);
    b[82..84].copy_from_slice(&rec[16 + 2 * r..16 + 2 * r + 2]);
    for i in 0..16 {
        b[i] = rec[32 + i * GROUP + r];
    }
    for u in 0..16 {
        b[16 + 4 * u..][..4].copy_from_slice(&rec[unit(Q2K_Q, u, r)..][..4]);
    }
    b
}

/// Where Q3_K's codes start in a record (after `d` and the scales, signed bytes as Q6_K's). The codes
/// `low + 4 high` (0..8) are stored as nibbles in Q4_K's order: unit `8j + k` holds weights
/// `4k..4k + 4` of sub-block `2j` in its low nibbles and of sub-block `2j + 1` in its high ones — 146
/// bytes per row and block instead of the file's 110, for products with no bit assembly.
pub const Q3K_Q: usize = 16 + 128;

fn pack_q3k(rec: &mut [u8], r: usize, b: &[u8]) {
    rec[2 * r..2 * r + 2].copy_from_slice(&b[108..110]);
    for i in 0..16 {
        rec[16 + i * GROUP + r] = q3k_scale(&b[96..108], i) as u8;
    }
    let mut c = [0u8; 32];
    for g in 0..8 {
        unpack_q3k(b, g, &mut c);
        for (w, &q) in c.iter().enumerate() {
            let at = unit(Q3K_Q, 8 * (g / 2) + w / 4, r) + w % 4;
            rec[at] = (rec[at] & (0xf0 >> (4 * (g % 2)))) | (q << (4 * (g % 2)));
        }
    }
}

/// Row `r`'s original Q3_K block from a packed record.
fn unpack_q3k_row(rec: &[u8], r: usize) -> Vec<u8> {
    let mut b = vec![0u8; 110];
    b[108..110].copy_from_slice(&rec[2 * r..2 * r + 2]);
    let sc: [i8; 16] = std::array::from_fn(|i| rec[16 + i * GROUP + r] as i8);
    b[96..108].copy_from_slice(&pack_q3k_scales(&sc));
    for g in 0..8 {
        for w in 0..32 {
            let q = (rec[unit(Q3K_Q, 8 * (g / 2) + w / 4, r) + w % 4] >> (4 * (g % 2))) & 15;
            // Q3_K's own layout: the low two bits in `qs[32 (g / 4) + w]` at bits 2 (g % 4), the high
            // bit in `hmask[w]` at bit g.
            b[32 + 32 * (g / 4) + w] |= (q & 3) << (2 * (g % 4));
            b[w] |= (q >> 2) << g;
        }
    }
    b
}

/// Where Q5_K's codes start in a record (after Q4_K's header). Sub-block `g` (32 weights: units
/// `0..8` of four codes per row) is five 32-byte vectors laid out as units (row `r`'s four bytes at
/// `4r`) from `Q5K_Q + 160 g`: `N_m = q_m & 15 | (q_{m+4} & 15) << 4` for `m` in 0..4, then `H`
/// holding the top bit of unit `k`'s codes at bit `k`. Unit `k` is `(N_{k % 4} >> 4 (k / 4)) & 15 |
/// (H << 4 >> k) & 16`: four or five vector operations per unit, the file's five bits per weight.
pub const Q5K_Q: usize = 32 + 128;

fn pack_q5k(rec: &mut [u8], r: usize, b: &[u8]) {
    rec[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
    rec[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&b[2..4]);
    let mut c = [0u8; 32];
    for g in 0..8 {
        let (sc, m) = scale_min_k4(g, &b[4..16]);
        rec[32 + g * GROUP + r] = sc;
        rec[96 + g * GROUP + r] = m;
        unpack_q5k(b, g, &mut c);
        put_five_bits(rec, Q5K_Q + 160 * g, r, &c);
    }
}

/// Row `r`'s original Q5_K block from a packed record.
fn unpack_q5k_row(rec: &[u8], r: usize) -> Vec<u8> {
    let mut b = vec![0u8; 176];
    b[0..2].copy_from_slice(&rec[2 * r..2 * r + 2]);
    b[2..4].copy_from_slice(&rec[16 + 2 * r..16 + 2 * r + 2]);
    let sc: Vec<u8> = (0..8).map(|g| rec[32 + g * GROUP + r]).collect();
    let m: Vec<u8> = (0..8).map(|g| rec[96 + g * GROUP + r]).collect();
    b[4..16].copy_from_slice(&crate::quants::k_quants::pack_scale_min_k4(&sc, &m));
    for g in 0..8 {
        for (w, q) in five_bits(rec, Q5K_Q + 160 * g, r).into_iter().enumerate() {
            // Q5_K's own layout: the high bit in `qh[w]` at bit g, the nibble in `qs[32 (g / 2) + w]`.
            b[16 + w] |= (q >> 4) << g;
            b[48 + 32 * (g / 2) + w] |= (q & 15) << (4 * (g % 2));
        }
    }
    b
}
