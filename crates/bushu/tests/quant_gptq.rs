//! GPTQ beats round-to-nearest at the same bits on the layer objective `||X(W − W~)ᵀ||²`, both on the
//! calibration activations (train.txt) and on held-out ones (val.txt), on the Shakespeare expert.

mod common;
use bushu::model::{load, Model};
use bushu::perplexity::tokenize_text;
use bushu::quant::calib::{collect, output_error, Hessians};
use bushu::quant::gptq::{gptq_quantize, GptqConfig};
use bushu::quant::int_types::{encode_rtn, IntType};
use common::shared;

fn hessians(model: &Model, file: &bushu::model::ModelFile, text: &str, offset: usize) -> Hessians {
    let text = std::fs::read_to_string(shared(text)).unwrap();
    let toks = tokenize_text(&file.tokenizer, &text[offset..offset + 60_000]).unwrap();
    let seqs: Vec<Vec<u32>> = toks.chunks_exact(128).take(8).map(|c| c.to_vec()).collect();
    collect(model, &seqs, |_, _| {}).unwrap()
}

#[test]
fn gptq_beats_rtn_on_calibration_and_held_out_activations() {
    let file = load(&shared("models/shakespeare/shakespeare-expert-f16.gguf")).unwrap();
    let model = Model::new(&file).unwrap();
    let calib = hessians(&model, &file, "testdata/shakespeare/train.txt", 100_000);
    let held = hessians(&model, &file, "testdata/shakespeare/val.txt", 0);
    for ty in ["int4-sym-g128", "int3-sym-g128", "int4-sym-g32"] {
        let t = IntType::parse(ty).unwrap();
        for name in [
            "blk.0.attn_q.weight",
            "blk.3.attn_output.weight",
            "blk.5.ffn_down.weight",
            "blk.2.ffn_up.weight",
        ] {
            let w = &file.tensors[name];
            let (cols, x) = (w.shape[0], w.to_f32());
            let rows = x.len() / cols;
            let (_, rtn, _) = encode_rtn(&t, &x, rows, cols).unwrap();
            let h = calib.get(name).unwrap();
            let (_, gq) = gptq_quantize(&t, &x, rows, cols, &h, &GptqConfig::default()).unwrap();
            let (_, ga) = gptq_quantize(
                &t,
                &x,
                rows,
                cols,
                &h,
                &GptqConfig {
                    act_order: true,
                    ..Default::default()
                },
            )
            .unwrap();
            let (mc, mh) = (calib.mean_xtx(name).unwrap(), held.mean_xtx(name).unwrap());
            let e = |m: &[f64], q: &[f32]| output_error(m, &x, q, cols);
            let (rc, gc, ac) = (e(&mc, &rtn), e(&mc, &gq), e(&mc, &ga));
            let (rh, gh, ah) = (e(&mh, &rtn), e(&mh, &gq), e(&mh, &ga));
            eprintln!(
                "{ty:<14} {name:<26} calib: RTN {rc:.3e} GPTQ {gc:.3e} ({:.2}x) act-order {ac:.3e} | held-out: RTN {rh:.3e} GPTQ {gh:.3e} ({:.2}x) act-order {ah:.3e}",
                rc / gc,
                rh / gh
            );
            assert!(gc < rc, "{ty} {name}: GPTQ {gc} >= RTN {rc} on calibration data");
            assert!(gh < rh, "{ty} {name}: GPTQ {gh} >= RTN {rh} on held-out data");
        }
    }
}
