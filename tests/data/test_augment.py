"""Tests for medseg_platform.data.augment (docs/data.md, 'Weak view', 'Strong view', '8-bit round trip')."""

import numpy as np
import pytest
import torch

from medseg_platform.data import augment as A


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def structured_batch(b: int = 4, size: int = 16, seed: int = 0):
    """Image whose label is a deterministic function of it: label = floor(4 * image), image in [0, 1)."""
    g = gen(seed)
    label = torch.randint(0, 4, (b, size, size), generator=g)
    # sub-level texture so that image pixels differ, label stays floor(4 * image)
    image = (label.float() + 0.05 + 0.9 * torch.rand(b, size, size, generator=g)) / 4.0
    return image.unsqueeze(1), label


def pseudo_batch(b: int = 4, size: int = 32):
    """Image, pseudo-label, confidence that identify their source image: all are functions of the index."""
    idx = torch.arange(b)
    image = (idx.float() / b).view(b, 1, 1, 1).expand(b, 1, size, size).clone()
    label = idx.view(b, 1, 1).expand(b, size, size).clone()
    conf = ((idx.float() + 1) / (b + 1)).view(b, 1, 1).expand(b, size, size).clone()
    return image, label, conf


# ------------------------------------------------------------------------------------------ resize


def test_resize_matches_scipy_zoom_order0():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for h_in, w_in, out in [(212, 217, 100), (150, 151, 64), (7, 5, 13), (40, 33, 32)]:
        img = rng.random((h_in, w_in)).astype(np.float32)
        lab = rng.integers(0, 4, (h_in, w_in)).astype(np.uint8)
        ref_i = ndimage.zoom(img, (out / h_in, out / w_in), order=0)
        ref_l = ndimage.zoom(lab, (out / h_in, out / w_in), order=0)
        im, lb = A.resize_slice(torch.from_numpy(img), torch.from_numpy(lab), out)
        assert im.shape == (1, out, out) and im.dtype == torch.float32
        assert lb.shape == (out, out) and lb.dtype == torch.int64
        np.testing.assert_array_equal(im[0].numpy(), ref_i)  # incl. scipy's zero last row for 212 -> 100
        np.testing.assert_array_equal(lb.numpy(), ref_l.astype(np.int64))


def test_resize_to_patch_stacks_and_bicubic_is_clamped():
    g = gen(1)
    images = [torch.rand(20, 30, generator=g), torch.rand(9, 9, generator=g)]
    labels = [torch.randint(0, 4, (20, 30), generator=g, dtype=torch.uint8),
              torch.randint(0, 4, (9, 9), generator=g, dtype=torch.uint8)]
    im, lb = A.resize_to_patch(images, labels, (16, 24))
    assert im.shape == (2, 1, 16, 24) and lb.shape == (2, 16, 24)
    assert set(lb.unique().tolist()) <= {0, 1, 2, 3}
    assert set(im[1].unique().tolist()) <= set(images[1].unique().tolist())  # nearest: no new values
    imc, lbc = A.resize_to_patch(images, labels, (16, 24), image_mode="bicubic")
    assert torch.equal(lbc, lb)  # label stays nearest
    assert imc.min() >= 0 and imc.max() <= 1
    assert not torch.equal(imc, im)
    # corner pixels are aligned (scipy zoom grid): same as the input corners
    assert torch.allclose(imc[0, 0, 0, 0], images[0][0, 0]) and torch.allclose(imc[0, 0, -1, -1], images[0][-1, -1])


@pytest.mark.parametrize("shape, out", [((20, 30), (16, 24)), ((9, 13), (48, 48)), ((96, 96), (48, 48))])
def test_cubic_resize_is_scipys_order_3_zoom_as_released(shape, out):
    """ACTION's released loader zooms the image with ``scipy.ndimage.zoom(image, (h/H, w/W), order=3)``: the values are
    scipy's to the bit (not torch's bicubic convolution, not clamped) and the label stays nearest."""
    from scipy import ndimage

    g = gen(3)
    image = torch.rand(shape, generator=g)
    label = torch.randint(0, 4, shape, generator=g, dtype=torch.uint8)
    im, lb = A.resize_slice(image, label, out, image_mode="cubic")
    expected = ndimage.zoom(image.numpy(), (out[0] / shape[0], out[1] / shape[1]), order=3)
    assert im.shape == (1, *out) and im.dtype == torch.float32
    np.testing.assert_array_equal(im[0].numpy(), expected)
    assert torch.equal(lb, A.resize_slice(image, label, out)[1])
    bicubic = A.resize_slice(image, label, out, image_mode="bicubic")[0]
    assert not torch.equal(im, bicubic)  # another interpolant
    if out[0] > shape[0]:  # upsampling noise: the spline overshoots [0, 1], as the release's does
        assert im.min() < 0 or im.max() > 1


@pytest.mark.parametrize("call", [
    lambda: A.resize_slice(torch.rand(1, 8, 8), torch.zeros(8, 8, dtype=torch.long), 4),
    lambda: A.resize_slice(torch.rand(8, 8), torch.zeros(8, 9, dtype=torch.long), 4),
    lambda: A.resize_slice(torch.rand(8, 8), torch.zeros(8, 8), 4),
    lambda: A.resize_slice(torch.rand(8, 8), torch.zeros(8, 8, dtype=torch.long), 0),
    lambda: A.resize_slice(torch.rand(8, 8), torch.zeros(8, 8, dtype=torch.long), 4, image_mode="bilinear"),
    lambda: A.resize_to_patch([torch.rand(8, 8)], [], 4),
])
def test_resize_rejects_bad_input(call):
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------------------------------ weak view


def test_weak_shapes_dtypes_and_label_follows_image():
    image, label = structured_batch(b=8)
    kinds = set()
    for seed in range(6):
        params = A.sample_weak_params(8, gen(seed))
        kinds |= set(params.kind.tolist())
        out_i, out_l = A.weak_augment(image, label, gen(seed))
        assert out_i.shape == image.shape and out_i.dtype == image.dtype
        assert out_l.shape == label.shape and out_l.dtype == label.dtype
        assert set(out_l.unique().tolist()) <= {0, 1, 2, 3}
        # every output pixel (incl. zero fill: image 0 -> label 0) keeps label = floor(4 * image)
        assert torch.equal(out_l, torch.floor(out_i[:, 0] * 4).long())
        # nearest: no new intensity values
        assert torch.isin(out_i, torch.cat([image.flatten(), torch.zeros(1)])).all()
    assert kinds == {0, 1, 2}


def test_weak_rot90_flip_is_exact_per_sample():
    image, label = structured_batch(b=16, size=12)
    params = A.sample_weak_params(16, gen(3), p_rot90_flip=1.0, p_rotate=0.0)
    assert (params.kind == 1).all() and len(set(params.k.tolist())) > 1
    out_i, out_l = A.apply_weak(image, label, params)
    for b in range(16):
        k, ax = int(params.k[b]), int(params.flip_axis[b])
        ref_i = torch.flip(torch.rot90(image[b], k, dims=(1, 2)), dims=(1 + ax,))
        ref_l = torch.flip(torch.rot90(label[b], k, dims=(0, 1)), dims=(ax,))
        assert torch.equal(out_i[b], ref_i) and torch.equal(out_l[b], ref_l)


def test_weak_rotation_matches_scipy_rotate():
    ndimage = pytest.importorskip("scipy.ndimage")
    image, label = structured_batch(b=6, size=40)
    params = A.sample_weak_params(6, gen(5), p_rot90_flip=0.0, p_rotate=1.0)
    assert (params.kind == 2).all() and (params.angle.abs() > 0).any()
    assert params.angle.min() >= -20 and params.angle.max() <= 19
    out_i, out_l = A.apply_weak(image, label, params)
    for b in range(6):
        ang = int(params.angle[b])
        ref_i = ndimage.rotate(image[b, 0].numpy(), ang, order=0, reshape=False)
        ref_l = ndimage.rotate(label[b].numpy(), ang, order=0, reshape=False)
        np.testing.assert_array_equal(out_i[b, 0].numpy(), ref_i)
        np.testing.assert_array_equal(out_l[b].numpy(), ref_l)


def test_weak_branch_frequencies():
    kind = A.sample_weak_params(4000, gen(0)).kind
    freq = torch.bincount(kind, minlength=3).float() / 4000
    assert abs(freq[1] - 0.5) < 0.03 and abs(freq[2] - 0.25) < 0.03 and abs(freq[0] - 0.25) < 0.03


def test_weak_seed_reproduces_and_p0_is_copy():
    image, label = structured_batch(b=8)
    a = A.weak_augment(image, label, gen(7))
    b = A.weak_augment(image, label, gen(7))
    c = A.weak_augment(image, label, gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    i0, l0 = A.weak_augment(image, label, gen(0), p_rot90_flip=0, p_rotate=0)  # ACTION: resize only
    assert torch.equal(i0, image) and torch.equal(l0, label)
    assert i0.data_ptr() != image.data_ptr() and l0.data_ptr() != label.data_ptr()


def test_weak_does_not_modify_inputs():
    image, label = structured_batch(b=4)
    ic, lc = image.clone(), label.clone()
    A.weak_augment(image, label, gen(0), p_rot90_flip=0.5, p_rotate=0.5)
    assert torch.equal(image, ic) and torch.equal(label, lc)


@pytest.mark.parametrize("kwargs", [
    dict(image=torch.rand(4, 8, 8), label=torch.zeros(4, 8, 8, dtype=torch.long)),
    dict(image=torch.rand(4, 1, 8, 8), label=torch.zeros(4, 8, 7, dtype=torch.long)),
    dict(image=torch.rand(4, 1, 8, 8), label=torch.zeros(4, 8, 8)),
    dict(image=torch.rand(4, 1, 8, 10), label=torch.zeros(4, 8, 10, dtype=torch.long)),  # rot90 needs square
    dict(image=torch.rand(4, 1, 8, 8), label=torch.zeros(4, 8, 8, dtype=torch.long), p_rot90_flip=1.5),
    dict(image=torch.rand(4, 1, 8, 8), label=torch.zeros(4, 8, 8, dtype=torch.long), p_rot90_flip=0.8,
         p_rotate=0.5),
    dict(image=torch.rand(4, 1, 8, 8), label=torch.zeros(4, 8, 8, dtype=torch.long), generator=0),
])
def test_weak_rejects_bad_input(kwargs):
    kwargs.setdefault("generator", gen(0))
    with pytest.raises(ValueError):
        A.weak_augment(**kwargs)


def test_weak_non_square_without_rot90_works():
    image, label = torch.rand(2, 1, 8, 12), torch.zeros(2, 8, 12, dtype=torch.long)
    out_i, out_l = A.weak_augment(image, label, gen(0), p_rot90_flip=0.0, p_rotate=1.0)
    assert out_i.shape == (2, 1, 8, 12) and out_l.shape == (2, 8, 12)


# ------------------------------------------------------------------------------------------ mixing


def source_index(image, label, conf, b):
    """Recover the source image index of every pixel from each of the three tensors (see pseudo_batch)."""
    from_image = torch.round(image[:, 0] * b).long()
    from_conf = torch.round(conf * (b + 1)).long() - 1
    return from_image, label, from_conf


def test_cutmix_half_area_box_from_partner_consistently():
    b, size = 6, 32
    image, label, conf = pseudo_batch(b, size)
    out = A.strong_augment(image, label, conf, gen(0), mix="cutmix", p_jitter=0, p_blur=0, quantise_8bit=False)
    src_i, src_l, src_c = source_index(*out, b)
    assert torch.equal(src_i, src_l) and torch.equal(src_l, src_c)
    own = torch.arange(b).view(b, 1, 1)
    partner = (own + 1) % b
    assert ((src_l == own) | (src_l == partner)).all()
    from_partner = src_l == partner
    frac = from_partner.float().mean(dim=(1, 2))
    assert ((frac - 0.5).abs() <= 0.5 / size + 1e-6).all(), frac
    for i in range(b):  # the partner region is one axis-aligned box
        rows = from_partner[i].any(1).nonzero()
        cols = from_partner[i].any(0).nonzero()
        box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(box_area) == int(from_partner[i].sum())


def test_cutmix_box_sizes_follow_spec():
    boxes = A.sample_boxes(500, 20, 30, gen(0))
    y0, x0, h, w = boxes.unbind(1)
    assert w.min() >= 16 and w.max() <= 29 and len(w.unique()) == 14
    assert torch.equal(h, torch.round(20 * 30 / 2 / w.double()).long())
    assert (y0 >= 0).all() and (y0 + h <= 20).all() and (x0 >= 0).all() and (x0 + w <= 30).all()
    assert x0.max() > 0 and y0.max() > 0


def test_classmix_keeps_random_half_of_present_classes():
    b, size = 5, 16
    g = gen(2)
    label = torch.randint(0, 4, (b, size, size), generator=g)
    label[1] = torch.randint(0, 2, (size, size), generator=g)  # only 2 classes present
    label[2] = 3  # a single class present: nothing kept, all from partner
    image = torch.arange(b).float().div(b).view(b, 1, 1, 1).expand(b, 1, size, size).clone()
    conf = torch.rand(b, size, size, generator=g)
    out_i, out_l, out_c = A.mix_batch(image, label, conf, gen(3), mix="classmix", num_classes=4)
    partner = torch.roll(torch.arange(b), -1)
    for i in range(b):
        kept = out_i[i, 0] == image[i, 0, 0, 0]
        present = label[i].unique()
        kept_classes = label[i][kept].unique()
        assert len(kept_classes) == len(present) // 2
        # a pixel is kept iff its class is one of the kept classes
        assert torch.equal(kept, torch.isin(label[i], kept_classes))
        assert torch.equal(out_l[i][kept], label[i][kept]) and torch.equal(out_c[i][kept], conf[i][kept])
        assert torch.equal(out_l[i][~kept], label[partner[i]][~kept])
        assert torch.equal(out_c[i][~kept], conf[partner[i]][~kept])
    # inferring num_classes gives the same draw
    again = A.mix_batch(image, label, conf, gen(3), mix="classmix")
    assert torch.equal(again[1], out_l)


def test_cutout_zeroes_box_and_ignores_labels():
    image, label, conf = pseudo_batch(4, 32)
    image, conf = image + 0.1, conf  # non-zero everywhere
    out_i, out_l, out_c = A.mix_batch(image, label, conf, gen(0), mix="cutout")
    box = out_l == -1
    assert ((box.float().mean(dim=(1, 2)) - 0.5).abs() <= 0.5 / 32 + 1e-6).all()
    assert (out_i[:, 0][box] == 0).all() and (out_c[box] == 0).all()
    assert torch.equal(out_i[:, 0][~box], image[:, 0][~box]) and torch.equal(out_l[~box], label[~box])


@pytest.mark.parametrize("mix", ["cutmix", "classmix", "none"])
def test_batch_of_one_is_its_own_partner(mix):
    image, label, conf = torch.rand(1, 1, 16, 16), torch.randint(0, 4, (1, 16, 16)), torch.rand(1, 16, 16)
    out = A.mix_batch(image, label, conf, gen(0), mix=mix, num_classes=4)
    assert torch.equal(out[0], image) and torch.equal(out[1], label) and torch.equal(out[2], conf)
    assert out[0].data_ptr() != image.data_ptr()


# ------------------------------------------------------------------------------------------ photometric


def test_brightness_contrast_match_pil_on_8bit():
    Image = pytest.importorskip("PIL.Image")
    ImageEnhance = pytest.importorskip("PIL.ImageEnhance")
    grey = torch.randint(0, 256, (1, 1, 12, 12), generator=gen(0)).float()
    pil = Image.fromarray(grey[0, 0].numpy().astype(np.uint8), "L")
    for f in (0.77, 1.0, 1.23):
        fac = torch.tensor([f], dtype=torch.float64)
        ours_b = A.adjust_brightness(grey, fac, levels=255)[0, 0].numpy()
        ours_c = A.adjust_contrast(grey, fac, levels=255)[0, 0].numpy()
        np.testing.assert_array_equal(ours_b, np.asarray(ImageEnhance.Brightness(pil).enhance(f)))
        np.testing.assert_array_equal(ours_c, np.asarray(ImageEnhance.Contrast(pil).enhance(f)))


def test_contrast_keeps_mean_and_brightness_scales():
    x = 0.25 + 0.5 * torch.rand(3, 1, 8, 8, generator=gen(0))
    fac = torch.tensor([0.8, 1.0, 1.2])
    c = A.adjust_contrast(x, fac)
    assert torch.allclose(c.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6)
    assert torch.allclose(c.std(dim=(1, 2, 3)), fac * x.std(dim=(1, 2, 3)), atol=1e-5)
    assert torch.allclose(A.adjust_brightness(x, fac), fac.view(3, 1, 1, 1) * x)


@pytest.mark.parametrize("levels", [None, 255])
def test_jitter_stays_in_range_and_p0_is_identity(levels):
    x = torch.rand(16, 1, 8, 8, generator=gen(0))
    x = x if levels is None else torch.floor(x * 255)
    hi = 1.0 if levels is None else 255.0
    out = A.color_jitter(x, gen(1), p=1.0, brightness=(1.5, 2.0), contrast=(1.5, 2.0), levels=levels)
    assert out.min() >= 0 and out.max() <= hi and (out == hi).any()
    assert torch.equal(A.color_jitter(x, gen(1), p=0.0, levels=levels), x)


def test_blur_keeps_mean_reduces_variance_and_sigma0_is_identity():
    x = torch.rand(4, 1, 32, 32, generator=gen(0))
    sigma = torch.tensor([0.0, 0.4, 0.7, 1.15])  # (sigma 0.15 is an identity to ~1e-10, as in PIL)
    y = A.gaussian_blur(x, sigma)
    assert torch.equal(y[0], x[0])
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=5e-3)
    var_x, var_y = x.var(dim=(1, 2, 3)), y.var(dim=(1, 2, 3))
    assert (var_y[1:] < var_x[1:]).all() and var_y[3] < var_y[2] < var_y[1]
    k = A.gaussian_kernels(sigma)
    assert k.shape == (4, 9) and torch.allclose(k.sum(1), torch.ones(4))


def test_blur_close_to_pil_gaussian_blur():
    Image = pytest.importorskip("PIL.Image")
    ImageFilter = pytest.importorskip("PIL.ImageFilter")
    ndimage = pytest.importorskip("scipy.ndimage")
    grey = ndimage.uniform_filter(np.random.default_rng(0).integers(0, 256, (48, 48)).astype(np.uint8), 5)
    for s in (0.5, 1.15):
        ref = np.asarray(Image.fromarray(grey).filter(ImageFilter.GaussianBlur(radius=s))).astype(np.float32)
        ours = A.gaussian_blur(torch.from_numpy(grey.astype(np.float32))[None, None], torch.tensor([s]))
        assert np.abs(np.floor(ours[0, 0].numpy() + 0.5) - ref).mean() < 1.0  # PIL uses box-blur passes


def test_random_blur_fires_per_image():
    x = torch.rand(64, 1, 8, 8, generator=gen(0))
    y = A.random_gaussian_blur(x, gen(1), p=0.5)
    changed = (y != x).flatten(1).any(1).float().mean()
    assert 0.3 < changed < 0.7


# ------------------------------------------------------------------------------------------ strong view


def test_strong_shapes_dtypes_quantisation_and_range():
    g = gen(0)
    image, label = torch.rand(4, 1, 24, 24, generator=g), torch.randint(0, 4, (4, 24, 24), generator=g)
    conf = torch.rand(4, 24, 24, generator=g)
    out_i, out_l, out_c = A.strong_augment(image, label, conf, gen(1), p_jitter=1.0, p_blur=1.0)
    assert out_i.shape == image.shape and out_i.dtype == image.dtype
    assert out_l.shape == label.shape and out_l.dtype == label.dtype
    assert out_c.shape == conf.shape and out_c.dtype == conf.dtype
    assert out_i.min() >= 0 and out_i.max() <= 1
    for t in (out_i, out_c):
        scaled = t * 255
        assert torch.allclose(scaled, torch.round(scaled), atol=1e-4)
    assert torch.equal(A.round_trip_8bit(conf), A.round_trip_8bit(A.round_trip_8bit(conf)))
    # no mixing, no photometric, no quantisation: an exact copy
    same = A.strong_augment(image, label, conf, gen(1), mix="none", p_jitter=0, p_blur=0, quantise_8bit=False)
    assert torch.equal(same[0], image) and torch.equal(same[2], conf)
    # without quantisation values are generally not on the 1/255 grid
    cont = A.strong_augment(image, label, conf, gen(1), quantise_8bit=False)[0] * 255
    assert not torch.allclose(cont, torch.round(cont), atol=1e-4)


def test_strong_seed_reproduces_and_does_not_modify_inputs():
    g = gen(0)
    image, label = torch.rand(4, 1, 16, 16, generator=g), torch.randint(0, 4, (4, 16, 16), generator=g)
    conf = torch.rand(4, 16, 16, generator=g)
    copies = (image.clone(), label.clone(), conf.clone())
    a = A.strong_augment(image, label, conf, gen(5))
    b = A.strong_augment(image, label, conf, gen(5))
    c = A.strong_augment(image, label, conf, gen(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert all(torch.equal(x, y) for x, y in zip((image, label, conf), copies))


@pytest.mark.parametrize("mix", ["cutmix", "classmix"])
def test_training_adapter_runs_strong_augment(mix):
    """What training hands the objectives (engine StrongAugmentAdapter: mix, then perturb; no warp here) is
    strong_augment's output, draw for draw, with the released 8-bit integer jitter and blur."""
    from medseg_platform.engine import StrongAugmentAdapter

    g = gen(0)
    image, label = torch.rand(4, 1, 24, 24, generator=g), torch.randint(0, 4, (4, 24, 24), generator=g)
    conf = torch.rand(4, 24, 24, generator=g)
    adapter = StrongAugmentAdapter(gen(9), mix, num_classes=4, advmorph_p=0.0)
    mixed = adapter.mix(image, label, conf)
    view = adapter.perturb(mixed.image)
    expected = A.strong_augment(image, label, conf, gen(9), mix=mix, num_classes=4)
    assert torch.equal(view, expected[0]) and torch.equal(mixed.pseudo_label, expected[1])
    assert torch.equal(mixed.confidence, expected[2])
    assert not torch.equal(view, mixed.image)  # jitter/blur fired (8 draws at p = 0.5 each)
    # the continuous variant of the same draws is a different view: the integer rounding is what training runs
    continuous = A.strong_augment(image, label, conf, gen(9), mix=mix, num_classes=4, quantise_8bit=False)[0]
    assert not torch.allclose(view, continuous, atol=1e-4)


def test_perturb_draws_again_from_one_mix():
    """MONA's two strong draws share one mix: each perturb is a new strong_perturb draw of the same mixed image."""
    from medseg_platform.engine import StrongAugmentAdapter

    image, label, conf = torch.rand(4, 1, 16, 16, generator=gen(1)), torch.zeros(4, 16, 16, dtype=torch.long), torch.rand(4, 16, 16)
    adapter = StrongAugmentAdapter(gen(2), "cutmix", num_classes=4, advmorph_p=0.0)
    mixed = adapter.mix(image, label, conf)
    first, second = adapter.perturb(mixed.image), adapter.perturb(mixed.image)
    reference = gen(2)
    A.strong_mix(image, label, conf, reference, "cutmix", num_classes=4)
    assert torch.equal(first, A.strong_perturb(mixed.image, reference))
    assert torch.equal(second, A.strong_perturb(mixed.image, reference))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("change", [
    dict(image=torch.rand(4, 16, 16)),
    dict(pseudo_label=torch.zeros(4, 16, 16)),
    dict(pseudo_label=torch.zeros(4, 16, 15, dtype=torch.long)),
    dict(confidence=torch.full((4, 16, 16), 1.5)),
    dict(confidence=torch.full((4, 16, 16), float("nan"))),
    dict(image=torch.full((4, 1, 16, 16), 2.0)),
    dict(pseudo_label=torch.full((4, 16, 16), 4, dtype=torch.long), num_classes=4),
    dict(pseudo_label=torch.full((4, 16, 16), -2, dtype=torch.long)),
    # an unsigned pseudo-label cannot hold the ignore label: valid uint8 labels failed the range check (-1 read as 255),
    # and CutOut wrote 255 for ignore with the check off
    dict(pseudo_label=torch.zeros(4, 16, 16, dtype=torch.uint8)),
    dict(mix="mixup"),
    dict(p_jitter=-0.1),
    dict(num_classes=0),
])
def test_strong_rejects_bad_input(change):
    kwargs = dict(image=torch.rand(4, 1, 16, 16), pseudo_label=torch.zeros(4, 16, 16, dtype=torch.long),
                  confidence=torch.rand(4, 16, 16), generator=gen(0))
    kwargs.update(change)
    with pytest.raises(ValueError) as err:
        A.strong_augment(**kwargs)
    assert "strong_augment" in str(err.value)


def test_mixing_names_an_unsigned_pseudo_label_as_the_problem():
    image, conf = torch.rand(2, 1, 16, 16), torch.rand(2, 16, 16)
    with pytest.raises(ValueError, match=r"mix_batch: pseudo_label must be a signed integer tensor .its ignore label is -1., "
                                         r"got torch.uint8"):
        A.mix_batch(image, torch.zeros(2, 16, 16, dtype=torch.uint8), conf, gen(0), "cutout", num_classes=4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cubic_resize_takes_half_precision_images_as_the_other_modes_do(dtype):
    """scipy zooms no half precision: the image is zoomed in float32 (it raised a TypeError/RuntimeError)."""
    image, label = torch.rand(10, 10, generator=gen(1)), torch.zeros(10, 10, dtype=torch.uint8)
    im, _ = A.resize_slice(image.to(dtype), label, 16, image_mode="cubic")
    assert im.dtype == torch.float32
    assert torch.equal(im, A.resize_slice(image.to(dtype).float(), label, 16, image_mode="cubic")[0])


def test_strong_check_values_can_be_skipped():
    image, label, conf = torch.rand(2, 1, 16, 16), torch.zeros(2, 16, 16, dtype=torch.long), torch.rand(2, 16, 16)
    out = A.strong_augment(image, label, conf * 1.5, gen(0), check_values=False, quantise_8bit=False)
    assert out[2].max() > 1


def test_photometric_helpers_reject_bad_input():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError):
        A.color_jitter(x, gen(0), p=2.0)
    with pytest.raises(ValueError):
        A.color_jitter(x, gen(0), brightness=(1.25, 0.75))
    with pytest.raises(ValueError):
        A.gaussian_blur(x, torch.ones(3))
    with pytest.raises(ValueError):
        A.adjust_contrast(x[:, 0], torch.ones(2))
    with pytest.raises(ValueError):
        A.sample_boxes(2, 8, 2, gen(0))


def test_identity_weak_view_draws_no_random_numbers():
    image, label = structured_batch(b=2)
    g = gen(0)
    A.weak_augment(image, label, g, p_rot90_flip=0.0, p_rotate=0.0)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=gen(0)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    image, label = structured_batch(b=4, size=32)
    conf = torch.rand(4, 32, 32, generator=gen(9))
    cpu_w = A.weak_augment(image, label, gen(1))
    gpu_w = A.weak_augment(image.cuda(), label.cuda(), gen(1))
    assert gpu_w[0].is_cuda and torch.equal(gpu_w[0].cpu(), cpu_w[0]) and torch.equal(gpu_w[1].cpu(), cpu_w[1])
    cpu_s = A.strong_augment(image, label, conf, gen(2), num_classes=4, p_jitter=1.0, p_blur=1.0)
    gpu_s = A.strong_augment(image.cuda(), label.cuda(), conf.cuda(), gen(2), num_classes=4, p_jitter=1.0,
                             p_blur=1.0)
    assert all(t.is_cuda for t in gpu_s)
    assert (gpu_s[0].cpu() - cpu_s[0]).abs().max() <= 1.5 / 255
    assert torch.equal(gpu_s[1].cpu(), cpu_s[1]) and torch.equal(gpu_s[2].cpu(), cpu_s[2])


# ------------------------------------------------------------------------------------------ pretraining views


def test_pretrain_views_per_batch_draws_one_jitter_and_one_blur_decision_for_the_batch():
    image = torch.rand(1, 1, 16, 16, generator=gen(0)).expand(4, 1, 16, 16).clone()  # four copies of one image
    fired = set()
    for seed in range(40):
        jittered, teacher = A.pretrain_views(image, gen(seed), "per_batch", p_jitter=0.5, p_blur=0.0)
        changed = [not torch.equal(jittered[i], image[i]) for i in range(4)]
        assert len(set(changed)) == 1  # all or none
        fired.add(changed[0])
        assert torch.equal(teacher, jittered)  # no blur: the teacher is the jittered batch, continuous
    assert fired == {True, False}
    jittered, teacher = A.pretrain_views(image, gen(1), "per_batch", p_jitter=0.0, p_blur=1.0)
    assert torch.equal(jittered, image)
    assert all(torch.equal(teacher[0], teacher[i]) for i in range(4))  # one sigma for the batch
    assert torch.equal(teacher * 255, torch.round(teacher * 255))  # blurred on 8-bit grey levels
    assert not torch.equal(teacher, A.round_trip_8bit(image))


def test_pretrain_views_per_image_draws_per_image_and_stays_continuous():
    image = torch.rand(1, 1, 16, 16, generator=gen(0)).expand(8, 1, 16, 16).clone()
    jittered, teacher = A.pretrain_views(image, gen(2), "per_image", p_jitter=0.0, p_blur=1.0)
    assert torch.equal(jittered, image)
    assert not torch.equal(teacher[0], teacher[1])  # a sigma per image
    assert not torch.equal(teacher * 255, torch.round(teacher * 255))
    jittered, _ = A.pretrain_views(image, gen(3), "per_image", p_jitter=0.5, p_blur=0.0)
    changed = {not torch.equal(jittered[i], image[i]) for i in range(8)}
    assert changed == {True, False}
    with pytest.raises(ValueError, match="pretrain_views: coins"):
        A.pretrain_views(image, gen(0), "per_step")


def test_the_8bit_blur_is_pillows_gaussian_blur_as_released():
    """A data-pipeline review: the released strong view blurs the 8-bit PIL image with
    ``ImageFilter.GaussianBlur(radius=sigma)`` (three rounded box blurs), which differed from the exact Gaussian used
    before by up to 13 grey levels. The 8-bit path is Pillow's call now, image by image; the continuous path stays."""
    from PIL import Image, ImageFilter

    g = gen(5)
    levels = torch.floor(torch.rand(4, 1, 20, 27, generator=g) * 256).clamp_max(255)
    sigma = torch.tensor([0.15, 0.6, 1.15, 0.0], dtype=torch.float64)
    out = A.pil_gaussian_blur(levels, sigma)
    for i in range(3):
        expected = Image.fromarray(levels[i, 0].numpy().astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius=float(sigma[i])))
        np.testing.assert_array_equal(out[i, 0].numpy(), np.asarray(expected).astype(np.float32))
    assert torch.equal(out[3], levels[3])  # sigma 0: not blurred
    assert torch.equal(A.pil_gaussian_blur(levels, torch.zeros(4, dtype=torch.float64)), levels)  # none to blur: no round trip
    assert not torch.equal(out[:3], torch.floor(A.gaussian_blur(levels, sigma.float()) + 0.5)[:3])
    # the strong view's random blur fires per image and blurs the fired ones with Pillow
    fired = A.random_gaussian_blur(levels, gen(9), p=1.0, levels=255)
    assert fired.dtype == levels.dtype and not torch.equal(fired, levels)
    assert torch.equal(fired, fired.round()) and fired.min() >= 0 and fired.max() <= 255


def test_blur_ranges_beyond_the_kernel_infinite_ranges_and_boolean_batch_sizes_are_one_line_errors():
    """The continuous blur's 9-tap kernel cut a sigma of 3 short (centre +33%) without a word; an infinite range failed in
    torch's uniform_; a batch size True reached torch.rand (the augmentation review)."""
    import math

    from medseg_platform.data.mixing import sample_boxes
    from medseg_platform.data.photometric import SIGMA_MAX, color_jitter, random_gaussian_blur
    from medseg_platform.data.weak_view import sample_weak_params

    image, g = torch.rand(2, 1, 16, 16), torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=rf"random_gaussian_blur: sigma_range \(3, 3\): the continuous blur's 9-tap kernel holds sigma <= {SIGMA_MAX}"):
        random_gaussian_blur(image, g, 1.0, (3, 3))
    assert random_gaussian_blur(image, g, 1.0, (3, 3), levels=255).shape == image.shape  # Pillow blurs any radius
    assert random_gaussian_blur(image, g, 1.0, (0.15, SIGMA_MAX)).shape == image.shape
    with pytest.raises(ValueError, match="color_jitter: brightness must be a pair of finite numbers"):
        color_jitter(image, g, 1.0, brightness=(0.5, math.inf))
    with pytest.raises(ValueError, match="batch_size must be a positive int, got True"):
        sample_weak_params(True, g)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got True"):
        sample_boxes(True, 8, 8, g)
