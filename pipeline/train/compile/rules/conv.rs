//! Backward rule of Conv (NCHW, 2-D), as standard ONNX ops: dB = ReduceSum(dY);
//! dX = ConvTranspose(dY, W) with the forward's strides, pads and dilations (output_padding
//! restores the rows a stride dropped); dW by *unfold*: one grouped Conv with a constant one-hot
//! kernel gives the im2col columns (N, C·kh·kw, h, w), then a batched MatMul with dY and a sum over
//! N (the fastest formulation measured, see DESIGN-NOTES); grouped and depthwise convolutions do
//! the same per group (a MatMul batched over N and the groups) — except a depthwise one with a
//! small output, whose dW is one grouped Conv of the input with dY as its kernel (no columns), and
//! any depthwise one of a session on the NCHWc kernels, whose dW is one depthwise Conv of the
//! batch stacked along the height (`stacked_weight_grad`), which their depthwise kernel runs; and
//! in such a session a group-1 one with little work per image, whose dW is one Conv of the input's
//! channels as a batch with dY as its kernels (`correlated_weight_grad`).

use crate::error::Result;
use crate::kernels;
use crate::onnx::builder::A;
use crate::onnx::proto::dtype;
use crate::onnx::proto::NodeProto;
use crate::onnx::{attr, attr_i, attr_ints, value_info, Dim, GraphBuilder};
use crate::train::compile::ctx::{unsupported, Ctx, Rule};
use crate::train::compile::graph::BATCH;
use crate::train::compile::nchwc::{padded, BATCH_BLOCKS};

/// This family's entries in the registry (`rules::rule`).
pub const RULES: &[(&str, Rule)] = &[("Conv", conv)];

/// A convolution as its gradient sees it: the node, its output gradient, and the shapes of its
/// input, output and weight.
struct At<'a> {
    n: &'a NodeProto,
    dy: &'a str,
    xs: &'a [usize],
    ys: &'a [usize],
    ws: &'a [usize],
    /// Whether the session has tlearn's CPU kernels (its columns then come from their `Unfold`).
    kernels: bool,
}

/// A 2-D convolution's geometry: its weight (M, C/group, kh, kw) and attributes, the pads made
/// explicit.
struct ConvGeom {
    m: usize,
    cg: usize,
    kh: usize,
    kw: usize,
    group: usize,
    s: Vec<usize>,
    d: Vec<usize>,
    pads: Vec<(i64, i64)>,
    /// The forward's attributes as ONNX writes them (pads: all begins, then all ends).
    pads_attr: Vec<i64>,
    strides: Vec<i64>,
    dil: Vec<i64>,
}

impl ConvGeom {
    fn of(r: &At) -> ConvGeom {
        let n = r.n;
        let ws = r.ws;
        let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let group = attr_i(n, "group", 1) as usize;
        let s = ints(n, "strides", 2, 1);
        let d = ints(n, "dilations", 2, 1);
        let pads = explicit_pads(n, r.xs, r.ys, &[kh, kw], &s, &d);
        let pads_attr: Vec<i64> = pads.iter().map(|p| p.0).chain(pads.iter().map(|p| p.1)).collect();
        let strides: Vec<i64> = s.iter().map(|&v| v as i64).collect();
        let dil: Vec<i64> = d.iter().map(|&v| v as i64).collect();
        ConvGeom { m, cg, kh, kw, group, s, d, pads, pads_attr, strides, dil }
    }
}

fn conv(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let shapes = cx.shapes;
    let xs = &shapes[&n.input[0]];
    if xs.len() != 4 {
        return Err(unsupported(n, &format!("only 2-D convolutions (rank-4 input), got rank {}", xs.len())));
    }
    let r = At { n, dy: &dy, xs, ys: &shapes[&n.output[0]], ws: &shapes[&n.input[1]], kernels: cx.forms.kernels() };
    let geom = ConvGeom::of(&r);
    if n.input.len() > 2 && !n.input[2].is_empty() && cx.wants(n, 2) {
        let ax = cx.b.const_i64("axes", &[0, 2, 3]);
        let db = cx.b.op("ReduceSum", &[r.dy, &ax], vec![("keepdims", A::I(0))]);
        cx.push(&n.input[2], db);
    }
    if cx.wants(n, 0) {
        let dx = conv_input_grad(cx.b, &r, &geom);
        cx.push(&n.input[0], dx);
    }
    if cx.wants(n, 1) {
        let dw = match (geom.group, cx.forms.nchwc) {
            (1, Some(block)) if correlates_on_kernels(block, &r, &geom) => {
                correlated_weight_grad(cx.b, &r, &geom, block)
            }
            (1, _) => conv_weight_grad(cx.b, &r, &geom),
            _ if stacks(cx.forms.nchwc, &geom) => stacked_weight_grad(cx.b, &r, &geom),
            _ if correlates(&r, &geom) => depthwise_weight_grad(cx.b, &r, &geom),
            _ => grouped_weight_grad(cx.b, &r, &geom),
        };
        cx.push(&n.input[1], dw);
    }
    Ok(())
}

/// dX as ConvTranspose with the forward's geometry; output_padding gives back the rows and
/// columns a stride dropped. A strided depthwise one declares dX's dims in the graph's value_info:
/// the NCHWc pass computes it by phases ([`nchwc`](crate::train::compile::nchwc)), which needs
/// them.
fn conv_input_grad(b: &mut GraphBuilder, r: &At, g: &ConvGeom) -> String {
    let k = [g.kh, g.kw];
    let opad: Vec<i64> = (0..2)
        .map(|i| {
            let full = (r.ys[2 + i] as i64 - 1) * g.s[i] as i64 + (k[i] as i64 - 1) * g.d[i] as i64 + 1;
            r.xs[2 + i] as i64 - (full - g.pads[i].0 - g.pads[i].1)
        })
        .collect();
    let dx = b.op(
        "ConvTranspose",
        &[r.dy, &r.n.input[1]],
        vec![
            ("strides", A::Ints(g.strides.clone())),
            ("dilations", A::Ints(g.dil.clone())),
            ("pads", A::Ints(g.pads_attr.clone())),
            ("group", A::I(g.group as i64)),
            ("output_padding", A::Ints(opad)),
        ],
    );
    if g.group > 1 && g.s.iter().any(|&s| s > 1) {
        let (c, h, w) = (r.xs[1] as i64, r.xs[2] as i64, r.xs[3] as i64);
        let dims = [Dim::named(BATCH), Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)];
        b.graph.value_info.push(value_info(&dx, dtype::FLOAT, &dims));
    }
    dx
}

/// The im2col columns of the forward's input: one grouped Conv with a constant one-hot kernel (on
/// tlearn's CPU kernels their `Unfold`),
/// (N, C·kh·kw, h, w) where channel c·kh·kw + (i·kw + j) is input channel c at kernel offset (i, j).
fn unfold(b: &mut GraphBuilder, r: &At, g: &ConvGeom, c: usize) -> String {
    let (kh, kw) = (g.kh, g.kw);
    let kk = kh * kw;
    // A 1×1 filter at stride 1 without pads: the columns are the input itself.
    if kk == 1 && g.s.iter().all(|&s| s == 1) && g.pads.iter().all(|&p| p == (0, 0)) {
        return r.n.input[0].clone();
    }
    // On tlearn's CPU kernels: rows copied, not a multiply-add per tap.
    if r.kernels && g.d.iter().all(|&d| d == 1) && kk as i64 <= kernels::MAX_WINDOW {
        let window = vec![
            ("kernel_shape", A::Ints(vec![kh as i64, kw as i64])),
            ("strides", A::Ints(g.strides.clone())),
            ("pads", A::Ints(g.pads_attr.clone())),
        ];
        return b.op_in(kernels::DOMAIN, kernels::UNFOLD, &[&r.n.input[0]], window);
    }
    let onehot = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[c * kk, 1, kh, kw]), |ix| {
        (ix[0] % kk == ix[2] * kw + ix[3]) as u8 as f32
    });
    let name = b.fresh("unfold_kernel");
    let kernel = b.init_f32(&name, &onehot);
    b.op(
        "Conv",
        &[&r.n.input[0], &kernel],
        vec![
            ("group", A::I(c as i64)),
            ("kernel_shape", A::Ints(vec![kh as i64, kw as i64])),
            ("strides", A::Ints(g.strides.clone())),
            ("dilations", A::Ints(g.dil.clone())),
            ("pads", A::Ints(g.pads_attr.clone())),
        ],
    )
}

/// dW by unfold (group 1).
fn conv_weight_grad(b: &mut GraphBuilder, r: &At, g: &ConvGeom) -> String {
    let (m, c, kh, kw) = (g.m, g.cg, g.kh, g.kw);
    let kk = kh * kw;
    let cols = unfold(b, r, g, c);
    let cols = b.reshape(&cols, "cols_shape", &[0, (c * kk) as i64, -1]);
    let dyr = b.reshape(r.dy, "dy_shape", &[0, m as i64, -1]);
    // (N, M, hw) × (N, hw, CK) — transpose whichever operand is smaller — then the sum over N.
    let per_sample = if m <= c * kk {
        let dyt = b.op("Transpose", &[&dyr], vec![("perm", A::Ints(vec![0, 2, 1]))]);
        let p = b.op("MatMul", &[&cols, &dyt], vec![]); // (N, CK, M)
        let s = batch_sum(b, &p, &[(c * kk) as i64, m as i64]);
        b.op("Transpose", &[&s], vec![("perm", A::Ints(vec![1, 0]))])
    } else {
        let ct = b.op("Transpose", &[&cols], vec![("perm", A::Ints(vec![0, 2, 1]))]);
        let p = b.op("MatMul", &[&dyr, &ct], vec![]); // (N, M, CK)
        batch_sum(b, &p, &[m as i64, (c * kk) as i64])
    };
    b.reshape(&per_sample, "w_shape", &[m as i64, c as i64, kh as i64, kw as i64])
}

/// dW of a grouped convolution (depthwise included): per group G, the columns of its cg input
/// channels (N, G, cg·kk, hw) times its mg output gradients (N, G, hw, mg), summed over N.
fn grouped_weight_grad(b: &mut GraphBuilder, r: &At, g: &ConvGeom) -> String {
    let (gr, cg, kh, kw) = (g.group, g.cg, g.kh, g.kw);
    let (ck, mg) = ((cg * kh * kw) as i64, (g.m / gr) as i64);
    let cols = unfold(b, r, g, cg * gr);
    let cols = b.reshape(&cols, "cols_shape", &[0, gr as i64, ck, -1]);
    // (N, G, mg, hw) → (N, G, hw, mg): a plain reshape for depthwise (mg = 1).
    let dyt = if mg == 1 {
        b.reshape(r.dy, "dy_shape", &[0, gr as i64, -1, 1])
    } else {
        let dyr = b.reshape(r.dy, "dy_shape", &[0, gr as i64, mg, -1]);
        b.op("Transpose", &[&dyr], vec![("perm", A::Ints(vec![0, 1, 3, 2]))])
    };
    let p = b.op("MatMul", &[&cols, &dyt], vec![]); // (N, G, cg·kk, mg)
    let s = batch_sum(b, &p, &[gr as i64, ck, mg]);
    let t = b.op("Transpose", &[&s], vec![("perm", A::Ints(vec![0, 2, 1]))]); // (G, mg, cg·kk)
    b.reshape(&t, "w_shape", &[g.m as i64, cg as i64, kh as i64, kw as i64])
}

/// The largest output (h·w) whose depthwise dW is a correlation: past it one group's kernel (dY)
/// is too large for the grouped Conv's columns to beat unfold's. Measured on EfficientNet-Lite0's
/// layers at batch 16 (onnxruntime 1.31.1, 2 threads): 19×19 and 38×38 outputs 1.5–2× faster as
/// correlations, 75×75 ones 1.6–1.8× slower.
const CORRELATE_MAX_AREA: usize = 40 * 40;

/// A depthwise convolution (one input and one output channel per group) with an output small
/// enough for [`depthwise_weight_grad`].
fn correlates(r: &At, g: &ConvGeom) -> bool {
    g.cg == 1 && g.m == g.group && r.ys[2] * r.ys[3] <= CORRELATE_MAX_AREA
}

/// dW of a depthwise convolution as one correlation: dW[c, i, j] = Σ_n Σ_y,x X[n, c, y·s + i·d,
/// x·s + j·d] · dY[n, c, y, x] is a Conv of X as (1, C·N, H, W) with dY as (C, N, h, w) kernels,
/// group C, the forward's pads, its strides as dilations and its dilations as strides — each
/// group's columns made and multiplied in cache instead of the whole unfolded (N, C·kh·kw, h, w).
/// The output holds at least kh × kw positions; a stride that dropped input rows leaves more,
/// sliced off.
fn depthwise_weight_grad(b: &mut GraphBuilder, r: &At, g: &ConvGeom) -> String {
    let c = g.group as i64;
    let (h, w) = (r.xs[2] as i64, r.xs[3] as i64);
    let xt = b.op("Transpose", &[&r.n.input[0]], vec![("perm", A::Ints(vec![1, 0, 2, 3]))]);
    let xt = b.reshape(&xt, "x_groups", &[1, -1, h, w]);
    let kernel = b.op("Transpose", &[r.dy], vec![("perm", A::Ints(vec![1, 0, 2, 3]))]);
    let corr = b.op(
        "Conv",
        &[&xt, &kernel],
        vec![
            ("group", A::I(c)),
            ("kernel_shape", A::Ints(vec![r.ys[2] as i64, r.ys[3] as i64])),
            ("strides", A::Ints(g.dil.clone())),
            ("dilations", A::Ints(g.strides.clone())),
            ("pads", A::Ints(g.pads_attr.clone())),
        ],
    );
    let (start, end, axes) =
        (b.const_i64("start", &[0, 0]), b.const_i64("end", &[g.kh as i64, g.kw as i64]), b.const_i64("axes", &[2, 3]));
    let dw = b.op("Slice", &[&corr, &start, &end, &axes], vec![]);
    b.reshape(&dw, "w_shape", &[c, 1, g.kh as i64, g.kw as i64])
}

/// The most multiply-adds per image (M · C·kh·kw · h·w) of a group-1 dW that
/// [`correlated_weight_grad`] takes: the unfold's per-image GEMMs are small there and the
/// correlation's kernels (dY) not too large. Measured in the steps of `make bench-train` (AMD EPYC,
/// 2 threads, onnxruntime 1.31.1): mnist's two 3×3 layers (0.3 and 2.2 M) and v1's last (33 M)
/// faster, ResNet-50's 14×14 and 7×7 3×3 layers (116 M) slower (34–36 against ≈ 21 ms each).
const CORRELATE_KERNELS_MAX_WORK: usize = 1 << 26;

/// The largest dY (h·w, the correlation's kernel) [`correlated_weight_grad`] takes: measured the
/// same way, v1's 34×34 layer even with the unfold, its 72×72 one 1.6× slower, and its first layer
/// (148×148, 19 M multiply-adds per image, its pool on tlearn's kernels) 36 against ≈ 20 ms.
const CORRELATE_KERNELS_MAX_AREA: usize = 32 * 32;

/// A group-1 convolution whose dW takes [`correlated_weight_grad`]'s form in a session on the
/// NCHWc kernels (`block`): a filter larger than 1×1 (a 1×1's dW is one MatMul already) at stride
/// 1 and dilation 1, little work per image, and output channels the kernels take.
fn correlates_on_kernels(block: usize, r: &At, g: &ConvGeom) -> bool {
    let unit = g.s.iter().chain(&g.d).all(|&v| v == 1);
    let work = g.m * g.cg * g.kh * g.kw * r.ys[2] * r.ys[3];
    let small = work <= CORRELATE_KERNELS_MAX_WORK && r.ys[2] * r.ys[3] <= CORRELATE_KERNELS_MAX_AREA;
    unit && g.kh * g.kw > 1 && small && padded(g.m as i64, block as i64).is_some()
}

/// dW of a group-1 convolution as one correlation, the form the NCHWc kernels run (`nchwc/`
/// moves it there): dW[m, c, i, j] = Σ_n Σ_y,x dY[n, m, y, x] · X[n, c, y + i, x + j] is a Conv of
/// X as (C, N, H, W) — its channels as the batch, its images as the channels — with dY as (M, N,
/// h, w) kernels and the forward's pads, giving (C, M, kh, kw). The kernels take whole blocks of
/// input channels: both get zero images up to a multiple of `block` (adding nothing), and the
/// kernels' count of them is declared [`BATCH_BLOCKS`] in the value_info, for the pass.
fn correlated_weight_grad(b: &mut GraphBuilder, r: &At, g: &ConvGeom, block: usize) -> String {
    let swap = |b: &mut GraphBuilder, t: &str| b.op("Transpose", &[t], vec![("perm", A::Ints(vec![1, 0, 2, 3]))]);
    let n = dim(b, &r.n.input[0], 0);
    let bl = b.const_i64("block", &[block as i64]);
    let rem = b.op("Mod", &[&n, &bl], vec![]);
    let short = b.op("Sub", &[&bl, &rem], vec![]);
    let extra = b.op("Mod", &[&short, &bl], vec![]);
    let (before, after) = (b.const_i64("before", &[0; 5]), b.const_i64("after", &[0; 2]));
    let pads = b.op("Concat", &[&before, &extra, &after], vec![("axis", A::I(0))]);
    let xt = swap(b, &r.n.input[0]);
    let xt = b.op("Pad", &[&xt, &pads], vec![]);
    let kt = swap(b, r.dy);
    let kernel = b.op("Pad", &[&kt, &pads], vec![]);
    // A name of its own: one symbolic dim name would say that every layer's count is equal.
    let images = Dim::named(&format!("{BATCH_BLOCKS}:{kernel}"));
    let dims = [Dim::Fixed(g.m as i64), images, Dim::Fixed(r.ys[2] as i64), Dim::Fixed(r.ys[3] as i64)];
    b.graph.value_info.push(value_info(&kernel, dtype::FLOAT, &dims));
    let corr = b.op("Conv", &[&xt, &kernel], vec![("pads", A::Ints(g.pads_attr.clone()))]);
    swap(b, &corr)
}

/// A depthwise convolution whose channels fill whole blocks of the NCHWc kernels (`block`: the
/// session's, None off them): its dW takes [`stacked_weight_grad`]'s form.
fn stacks(block: Option<usize>, g: &ConvGeom) -> bool {
    g.cg == 1 && g.m == g.group && block.is_some_and(|b| g.group.is_multiple_of(b))
}

/// The prefix of a stacked kernel's row count's name in its declared shape (the batch's: not a
/// constant).
pub const STACKED_ROWS: &str = "stacked_rows";

/// dW of a depthwise convolution as one depthwise Conv, the form the NCHWc depthwise kernel runs
/// (`nchwc/` moves it there; a correlation or unfold of EfficientNet's 5×5 layers runs as
/// grouped GEMMs, 2–3× slower). The batch is stacked along the height: each image of X padded
/// to R rows (its top pad, then zeros to a multiple of the stride s past its bottom pad), X as
/// (1, C, N·R, W); each image of dY padded to R/s rows, dY as the (C, 1, N·R/s, w) kernels. The
/// kernel's row y of image n then meets input row n·R + s·y + d·i at offset i, inside image n's
/// rows, and its rows of zeros meet the next image's. The correlation's strides are the
/// forward's dilations and its dilations the forward's strides; rows of zeros below the last
/// image give it the kh offsets. The kernels' row count follows the batch: declared as
/// [`STACKED_ROWS`] in the graph's value_info, for the NCHWc pass.
fn stacked_weight_grad(b: &mut GraphBuilder, r: &At, g: &ConvGeom) -> String {
    let c = g.group as i64;
    let (h, w, oh, ow) = (r.xs[2] as i64, r.xs[3] as i64, r.ys[2] as i64, r.ys[3] as i64);
    let (s, d, (top, bottom)) = (g.strides[0], g.dil[0], g.pads[0]);
    let rows = (h + top + bottom + s - 1) / s * s;
    let stacked = |b: &mut GraphBuilder, t: &str, pads: [i64; 2], shape: &[i64]| {
        let t = b.op("Transpose", &[t], vec![("perm", A::Ints(vec![1, 0, 2, 3]))]);
        let t = zero_rows(b, &t, pads, c, shape[3]);
        b.reshape(&t, "stacked", shape)
    };
    let xs = stacked(b, &r.n.input[0], [top, rows - h - top], &[1, c, -1, w]);
    let kernel = stacked(b, r.dy, [0, rows / s - oh], &[c, 1, -1, ow]);
    // A name of its own: one symbolic dim name would say that every layer's rows are equal.
    let rows_dim = Dim::named(&format!("{STACKED_ROWS}:{kernel}"));
    let dims = [Dim::Fixed(c), Dim::Fixed(1), rows_dim, Dim::Fixed(ow)];
    b.graph.value_info.push(value_info(&kernel, dtype::FLOAT, &dims));
    let below = (d * (g.kh as i64 - 1) - s + 1).max(0);
    let (left, right) = g.pads[1];
    let corr = b.op(
        "Conv",
        &[&xs, &kernel],
        vec![
            ("group", A::I(c)),
            ("strides", A::Ints(g.dil.clone())),
            ("dilations", A::Ints(g.strides.clone())),
            ("pads", A::Ints(vec![0, left, below, right])),
        ],
    );
    let (start, end, axes) =
        (b.const_i64("start", &[0, 0]), b.const_i64("end", &[g.kh as i64, g.kw as i64]), b.const_i64("axes", &[2, 3]));
    let dw = b.op("Slice", &[&corr, &start, &end, &axes], vec![]);
    b.reshape(&dw, "w_shape", &[c, 1, g.kh as i64, g.kw as i64])
}

/// `t` (C, N, H, W) with `pads` rows of zeros above and below each image: a Concat with zeros
/// (Expand of a scalar to (C, N, rows, W)), which onnxruntime runs in a quarter of Pad's time on
/// Lite0's largest map (16×96×150×150: 9 against 40 ms).
fn zero_rows(b: &mut GraphBuilder, t: &str, pads: [i64; 2], c: i64, w: i64) -> String {
    if pads == [0, 0] {
        return t.to_string();
    }
    let n = dim(b, t, 1);
    let zero = b.const_f32("zero", 0.0);
    let zeros = |b: &mut GraphBuilder, rows: i64| {
        let (cc, rr, ww) = (b.const_i64("c", &[c]), b.const_i64("rows", &[rows]), b.const_i64("w", &[w]));
        let shape = b.op("Concat", &[&cc, &n, &rr, &ww], vec![("axis", A::I(0))]);
        b.op("Expand", &[&zero, &shape], vec![])
    };
    let above = (pads[0] > 0).then(|| zeros(b, pads[0]));
    let below = (pads[1] > 0).then(|| zeros(b, pads[1]));
    let inputs: Vec<&str> = above.as_deref().into_iter().chain([t]).chain(below.as_deref()).collect();
    b.op("Concat", &inputs, vec![("axis", A::I(2))])
}

/// The size of `t`'s axis `axis` when the graph runs, as a 1-element int64 tensor.
fn dim(b: &mut GraphBuilder, t: &str, axis: i64) -> String {
    let shape = b.op("Shape", &[t], vec![]);
    let at = b.const_i64("axis", &[axis]);
    b.op("Gather", &[&shape, &at], vec![])
}

/// Sum of `p` (N, …) over its first axis, reshaped to `shape`: a MatMul of a row of N ones with
/// `p` as (N, rest). onnxruntime's ReduceSum over the leading axis runs on one thread; the MatMul
/// is ~25× faster on v1's weight gradients (6.2 → 0.2 ms for (32, 1152, 128), `make bench-train`).
fn batch_sum(b: &mut GraphBuilder, p: &str, shape: &[i64]) -> String {
    let p2 = b.reshape(p, "rows", &[0, -1]);
    let dims = dim(b, p, 0);
    let one = b.const_i64("one", &[1]);
    let row_shape = b.op("Concat", &[&one, &dims], vec![("axis", A::I(0))]);
    let one_f = b.const_f32("one", 1.0);
    let ones = b.op("Expand", &[&one_f, &row_shape], vec![]);
    let s = b.op("MatMul", &[&ones, &p2], vec![]);
    b.reshape(&s, "shape", shape)
}

/// Explicit (begin, end) pads per spatial axis, resolving `auto_pad`.
fn explicit_pads(n: &NodeProto, x: &[usize], y: &[usize], k: &[usize], s: &[usize], d: &[usize]) -> Vec<(i64, i64)> {
    let sp = k.len();
    let auto = attr(n, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).into_owned()).unwrap_or_default();
    (0..sp)
        .map(|i| {
            let (xin, yout) = (x[2 + i] as i64, y[2 + i] as i64);
            let span = (k[i] as i64 - 1) * d[i] as i64 + 1;
            match auto.as_str() {
                "SAME_UPPER" | "SAME_LOWER" => {
                    let total = ((yout - 1) * s[i] as i64 + span - xin).max(0);
                    let small = total / 2;
                    if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    }
                }
                "VALID" => (0, 0),
                _ => {
                    let p = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 2 * sp]);
                    (p[i], p[i + sp])
                }
            }
        })
        .collect()
}

pub fn ints(n: &NodeProto, name: &str, len: usize, default: i64) -> Vec<usize> {
    attr_ints(n, name).unwrap_or_else(|| vec![default; len]).iter().map(|&v| v as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{self, Dim};
    use ndarray::{ArrayD, IxDyn};
    use rand::{Rng, SeedableRng};

    /// dW of one depthwise Conv of `x` (N, C, H, H), weight (C, 1, k, k) and `attrs`, whose output
    /// is `ho`×`ho`, by both forms: (correlation, unfold).
    fn both_forms(x: &ArrayD<f32>, k: usize, ho: usize, attrs: Vec<(&str, A)>) -> (ArrayD<f32>, ArrayD<f32>) {
        let (n, c, h) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let mut b = GraphBuilder::new("dw");
        b.input("x", &[Dim::Fixed(n as i64), Dim::Fixed(c as i64), Dim::Fixed(h as i64), Dim::Fixed(h as i64)]);
        b.input("dy", &[Dim::Fixed(n as i64), Dim::Fixed(c as i64), Dim::Fixed(ho as i64), Dim::Fixed(ho as i64)]);
        let w = b.init_f32("w", &ArrayD::zeros(IxDyn(&[c, 1, k, k])));
        let mut attrs = attrs;
        attrs.push(("group", A::I(c as i64)));
        b.op("Conv", &["x", &w], attrs);
        let node = b.graph.node.last().unwrap().clone();
        let (xs, ys, ws) = (x.shape().to_vec(), vec![n, c, ho, ho], vec![c, 1, k, k]);
        let r = At { n: &node, dy: "dy", xs: &xs, ys: &ys, ws: &ws, kernels: false };
        let g = ConvGeom::of(&r);
        assert!(correlates(&r, &g));
        let corr = depthwise_weight_grad(&mut b, &r, &g);
        let unfold = grouped_weight_grad(&mut b, &r, &g);
        b.output_any(&corr);
        b.output_any(&unfold);
        let m = onnx::model(b.finish(), "dw");
        let opts = crate::runtime::SessionOptions { device: crate::runtime::Device::Cpu, threads: 1, precision: None };
        let mut s =
            crate::runtime::open(&onnx::encode_model(&m), std::path::Path::new("dw.onnx"), &opts).unwrap().session;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let dy = ArrayD::from_shape_simple_fn(IxDyn(&ys), || rng.gen_range(-1.0f32..1.0));
        let out = crate::runtime::run_f32(&mut s, vec![("x", x.view()), ("dy", dy.view())], &[&corr, &unfold]).unwrap();
        (out[0].clone(), out[1].clone())
    }

    /// The correlation equals unfold's dW on the forms EfficientNet's depthwise layers take and
    /// the corners around them: TF "SAME" with stride 2, symmetric and asymmetric pads, a
    /// dilation, and a stride that drops input rows (the correlation's extra positions sliced off).
    #[test]
    fn a_depthwise_weight_gradient_as_one_correlation_equals_unfolds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let x = ArrayD::from_shape_simple_fn(IxDyn(&[3, 4, 10, 10]), || rng.gen_range(-1.0f32..1.0));
        let same = ("auto_pad", A::S("SAME_UPPER"));
        // (kernel, output size, the Conv's attributes)
        type Case<'a> = (usize, usize, Vec<(&'a str, A)>);
        let cases: Vec<Case> = vec![
            (3, 5, vec![same.clone(), ("strides", A::Ints(vec![2, 2]))]),
            (5, 5, vec![same, ("strides", A::Ints(vec![2, 2]))]),
            (5, 10, vec![("pads", A::Ints(vec![2, 2, 2, 2]))]),
            (3, 10, vec![("pads", A::Ints(vec![0, 1, 2, 1]))]),
            (3, 8, vec![("pads", A::Ints(vec![1, 1, 1, 1])), ("dilations", A::Ints(vec![2, 2]))]),
            (3, 4, vec![("strides", A::Ints(vec![2, 2]))]),
        ];
        for (k, ho, attrs) in cases {
            let what = format!("{k}×{k} {attrs:?}");
            let (corr, unfold) = both_forms(&x, k, ho, attrs);
            assert_eq!(corr.shape(), &[4, 1, k, k], "{what}");
            let scale = unfold.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = (&corr - &unfold).iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0 && d <= 1e-5 * scale, "{what}: differs by {d} (scale {scale})");
        }
    }
}
