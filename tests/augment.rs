//! Augmentation transforms: exact geometry on small images, fill modes, and seeded batches that do
//! not depend on the number of threads.

use ndarray::{Array3, Array4};
use rand::Rng;
use rand::SeedableRng;
use tlearn::augment::{apply, Augment, FillMode, Transform};

fn ident() -> Transform {
    Transform::identity()
}

/// A 5×5 one-channel image with distinct values r·10 + c.
fn img() -> Array3<u8> {
    Array3::from_shape_fn((5, 5, 1), |(r, c, _)| (r * 10 + c) as u8)
}

fn run(t: &Transform, mode: FillMode, cval: f32) -> Array3<f32> {
    let src = img();
    let mut out = Array3::<f32>::zeros((5, 5, 1));
    apply(t, src.view(), out.view_mut(), mode, cval);
    out
}

fn close(a: &Array3<f32>, f: impl Fn(usize, usize) -> f32) {
    for ((r, c, _), v) in a.indexed_iter() {
        assert!((v - f(r, c)).abs() < 1e-3, "({r},{c}): {v} vs {}\n{a:?}", f(r, c));
    }
}

#[test]
fn identity_rotation_flip_and_zoom_geometry() {
    let x = img().mapv(|v| v as f32);
    close(&run(&ident(), FillMode::Nearest, 0.0), |r, c| x[[r, c, 0]]);
    // θ = 90°: output (r, c) samples input (4 − c, r) — a clockwise quarter turn.
    close(&run(&Transform { theta: 90.0, ..ident() }, FillMode::Nearest, 0.0), |r, c| x[[4 - c, r, 0]]);
    close(&run(&Transform { flip_h: true, ..ident() }, FillMode::Nearest, 0.0), |r, c| x[[r, 4 - c, 0]]);
    close(&run(&Transform { flip_v: true, ..ident() }, FillMode::Nearest, 0.0), |r, c| x[[4 - r, c, 0]]);
    // Zoom 0.5 about the centre: output (r, c) samples input (2 + (r − 2)/2, …), bilinearly.
    close(&run(&Transform { zx: 0.5, zy: 0.5, ..ident() }, FillMode::Nearest, 0.0), |r, c| {
        let (y, x2) = (2.0 + (r as f32 - 2.0) / 2.0, 2.0 + (c as f32 - 2.0) / 2.0);
        y * 10.0 + x2
    });
}

#[test]
fn quarter_turns_and_photometric_changes() {
    let x = img().mapv(|v| v as f32);
    // np.rot90(x, k): k = 1 → out[i][j] = x[j][4 − i]; 2 → x[4 − i][4 − j]; 3 → x[4 − j][i].
    close(&run(&Transform { rot90: 1, ..ident() }, FillMode::Nearest, 0.0), |r, c| x[[c, 4 - r, 0]]);
    close(&run(&Transform { rot90: 2, ..ident() }, FillMode::Nearest, 0.0), |r, c| x[[4 - r, 4 - c, 0]]);
    close(&run(&Transform { rot90: 3, ..ident() }, FillMode::Nearest, 0.0), |r, c| x[[4 - c, r, 0]]);
    // After a horizontal flip: the flip first, then the turn.
    close(&run(&Transform { rot90: 1, flip_h: true, ..ident() }, FillMode::Nearest, 0.0), |r, c| x[[c, r, 0]]);
    let mean = x.mean().unwrap();
    close(&run(&Transform { brightness: 2.0, ..ident() }, FillMode::Nearest, 0.0), |r, c| {
        (x[[r, c, 0]] * 2.0).min(255.0)
    });
    close(&run(&Transform { contrast: 0.0, ..ident() }, FillMode::Nearest, 0.0), |_, _| mean);
    close(&run(&Transform { contrast: 0.5, ..ident() }, FillMode::Nearest, 0.0), |r, c| {
        mean + 0.5 * (x[[r, c, 0]] - mean)
    });
    // Draws: all four turns on a square image, only 0 and 2 on an oblong one.
    let aug = Augment { rot90: true, brightness_range: Some((0.5, 1.5)), contrast_range: 0.2, ..Default::default() };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let turns = |h, w, rng: &mut rand_chacha::ChaCha8Rng| {
        (0..200).map(|_| aug.draw(rng, h, w).rot90).collect::<std::collections::BTreeSet<u8>>()
    };
    assert_eq!(turns(8, 8, &mut rng).into_iter().collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(turns(8, 6, &mut rng).into_iter().collect::<Vec<_>>(), [0, 2]);
    let t = aug.draw(&mut rng, 8, 8);
    assert!((0.5..1.5).contains(&t.brightness) && (0.8..1.2).contains(&t.contrast), "{t:?}");
    // Settings without the new options draw the same stream as before they existed.
    let old = Augment { horizontal_flip: true, ..Default::default() };
    let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut b = a.clone();
    old.draw(&mut a, 8, 8);
    b.gen::<f32>();
    assert_eq!(a.gen::<u64>(), b.gen::<u64>(), "one draw for the flip only");
}

#[test]
fn shifts_fill_the_border_by_mode() {
    let x = img().mapv(|v| v as f32);
    let t = Transform { tx: 2.0, ..ident() }; // output row r samples input row r + 2
    close(&run(&t, FillMode::Nearest, 0.0), |r, c| x[[(r + 2).min(4), c, 0]]);
    close(&run(&t, FillMode::Constant, 7.0), |r, c| if r + 2 <= 4 { x[[r + 2, c, 0]] } else { 7.0 });
    close(&run(&t, FillMode::Wrap, 0.0), |r, c| x[[(r + 2) % 5, c, 0]]);
    // Reflect: rows 5, 6 mirror to 4, 3.
    close(&run(&t, FillMode::Reflect, 0.0), |r, c| x[[if r + 2 <= 4 { r + 2 } else { 9 - (r + 2) }, c, 0]]);
    let t = Transform { ty: -1.0, ..ident() }; // output column c samples input column c − 1
    close(&run(&t, FillMode::Constant, 0.0), |r, c| if c >= 1 { x[[r, c - 1, 0]] } else { 0.0 });
}

#[test]
fn batches_are_seeded_and_independent_of_threads() {
    let x = Array4::from_shape_fn((6, 12, 10, 3), |(n, r, c, ch)| ((n * 31 + r * 7 + c * 3 + ch * 11) % 256) as u8);
    let aug = Augment { fill_mode: FillMode::Reflect, ..Augment::classic() };
    let idx = [5, 0, 3, 3, 1];
    let with_threads = |n: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        pool.install(|| aug.batch(x.view(), &idx, 1.0 / 255.0, &mut rand_chacha::ChaCha8Rng::seed_from_u64(9)))
    };
    let a = with_threads(1);
    assert_eq!(a.shape(), &[5, 12, 10, 3]);
    assert_eq!(a, with_threads(3), "same seed, any thread count, same batch");
    let b = aug.batch(x.view(), &idx, 1.0 / 255.0, &mut rand_chacha::ChaCha8Rng::seed_from_u64(10));
    assert_ne!(a, b, "another seed, another batch");
    // The two copies of image 3 get different transforms.
    assert_ne!(a.index_axis(ndarray::Axis(0), 2), a.index_axis(ndarray::Axis(0), 3));
    assert!(a.iter().all(|&v| (0.0..=1.0).contains(&v)), "rescaled into 0..1");
}
