"""The sparse representation path trains exactly like the dense reference (methods/pixel_reps.py).

For MONA/ARCO and ACTION, two objectives built from the same weights, one with ``representation="dense"``
(full (N, D, H, W) maps, as released) and one with ``"sparse"`` (the default: representations only where the
losses read them), run several SGD steps on the same batches and RNG streams in float64. At every step the
loss terms, the gradient of every parameter, and after every step the memory banks and the NN pool must agree
to a relative 1e-6, for each flag that changes the contrast path, at the smoke and quick profile sizes
(``medseg_platform.profiles``). Run them alone with ``pytest -k dense``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from medseg_platform.engine import StrongAugmentAdapter, logs_after
from medseg_platform.profiles import PROFILES
from medseg_platform.recipes import method_overrides, with_epoch_length
from methods.objective import Batch, StrongView
from methods.pixel_reps import DenseReps, SparseActionReps, SparseMonaReps
from methods.registry import build_model, build_objective
from tests.methods.test_mona import shapes

STEPS = 3
RTOL = 1e-6


def _profile_params(method: str, size: str) -> tuple[dict, int, tuple[int, ...]]:
    profile = PROFILES[size]
    params, _ = with_epoch_length(method_overrides(method, profile)["objective_params"], 2)  # several epochs in 3 steps
    return params, profile.trial.data.patch_size[0], tuple(profile.trial.model.channels)


def _pair(objective: str, params: dict, channels: tuple[int, ...], representations=("dense", "sparse")):
    """Objectives with identical weights, banks and pools (float64), one per representation (default: dense and
    sparse)."""
    built = []
    torch.manual_seed(0)
    model = build_model("unet", num_classes=4, channels=channels).double()
    for representation in representations:
        torch.manual_seed(1)  # heads and the NN pool draw from the global RNG at construction
        built.append(build_objective(objective, copy.deepcopy(model), {**params, "representation": representation}).double())
    return built


class Float64Augment:
    """The engine's strong views (what training runs: CutMix, 8-bit jitter/blur, AdvMorph), which it computes
    in float32, handed back in float64."""

    def __init__(self, step: int) -> None:
        self.inner = StrongAugmentAdapter(torch.Generator().manual_seed(200 + step), "cutmix", 4)

    def mix(self, image, pseudo_label, confidence) -> StrongView:
        view = self.inner.mix(image, pseudo_label, confidence)
        return StrongView(view.image.double(), view.pseudo_label, view.confidence.double())

    def perturb(self, image):
        return self.inner.perturb(image).double()


def _batch(step: int, patch: int) -> Batch:
    generator = torch.Generator().manual_seed(100 + step)
    labelled, label = shapes(generator, 4, patch)
    unlabelled, _ = shapes(generator, 4, patch)
    return Batch(labelled.double(), label, unlabelled.double(), Float64Augment(step))


def _close(a: torch.Tensor, b: torch.Tensor, what: str, scale: float | None = None) -> None:
    """Equal to a relative ``RTOL`` of ``scale`` (default: the largest magnitude of ``a``)."""
    if scale is None:
        scale = float(a.detach().abs().max()) if a.numel() else 0.0
    torch.testing.assert_close(b.detach(), a.detach(), rtol=RTOL, atol=RTOL * max(scale, 1e-12), msg=lambda m: f"{what}: {m}")


def _state(objective) -> dict[str, torch.Tensor]:
    """Banks, pool and every other buffer (the teacher's included); the NN pool as its (K, F) rows, whatever
    its storage (the sparse path keeps a full-resolution pool compact: methods/nn_pool.py)."""
    state = {name: value for name, value in objective.state_dict().items()
             if (value.is_floating_point() or "pointer" in name or "size" in name) and not name.startswith("nn_pool_compact.")}
    if getattr(objective, "nn_pool_pointer", None) is not None:
        state["nn_pool"] = objective.pool_rows()
    return state


class _BuiltReps:
    """Counts the representation sources the objectives build (``methods.mona`` / ``methods.action`` construct them
    by these names), per kind, while it is entered."""

    KINDS = {"SparseMonaReps": "sparse", "SparseActionReps": "sparse", "DenseReps": "dense"}

    def __init__(self, monkeypatch) -> None:
        import methods.action
        import methods.mona

        self.counts = {"sparse": 0, "dense": 0}
        for module in (methods.mona, methods.action):
            for name, kind in self.KINDS.items():
                if hasattr(module, name):
                    monkeypatch.setattr(module, name, self._counting(getattr(module, name), kind))

    def _counting(self, cls, kind):
        def build(*args, **kwargs):
            self.counts[kind] += 1
            return cls(*args, **kwargs)

        return build

    def taken(self) -> dict[str, int]:
        """The counts since the last call, then zero."""
        counts, self.counts = self.counts, {"sparse": 0, "dense": 0}
        return counts


def run_pair(objective: str, params: dict, patch: int, channels: tuple[int, ...], steps: int = STEPS,
             logged_steps=None) -> list[dict[str, float]]:
    """Train the dense and the sparse objective side by side; assert equality; return the dense terms.

    Each step also asserts that the sparse objective built sparse representation sources and no dense one wherever
    the dense objective built any (the test audit: with the sparse branch disabled, every comparison here was dense
    against dense and passed)."""
    dense, sparse = _pair(objective, params, channels)
    sparse.logged_steps = logged_steps
    optimisers = [torch.optim.SGD(o.trainable_parameters(), lr=0.05, momentum=0.9) for o in (dense, sparse)]
    history = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        built = _BuiltReps(monkeypatch)
        for step in range(steps):
            _compare_step(dense, sparse, optimisers, built, step, patch, logged_steps, history)
    return history


def _compare_step(dense, sparse, optimisers, built: _BuiltReps, step: int, patch: int, logged_steps, history: list) -> None:
    """One step of :func:`run_pair`: both objectives on the same batch and RNG stream, then every comparison."""
    outs, counts = [], []
    for obj, optimiser in zip((dense, sparse), optimisers):
        torch.manual_seed(1000 + step)  # samplers, TPS, dropout: the same stream on both paths
        out = obj.loss(_batch(step, patch), step, 20)
        optimiser.zero_grad(set_to_none=True)
        out.total.backward()
        outs.append(out)
        counts.append(built.taken())
    (d_built, s_built) = counts
    assert d_built["sparse"] == 0, (step, d_built)
    assert s_built["dense"] == 0 and (s_built["sparse"] > 0) == (d_built["dense"] > 0), (step, d_built, s_built)
    (d_out, s_out) = outs
    _close(d_out.total, s_out.total, f"step {step} total")
    expected_terms = set(d_out.terms) if logged_steps is None or sparse.is_logged_step(step, 20) else set(d_out.terms) - {"nn"}
    assert set(s_out.terms) == expected_terms, (step, sorted(d_out.terms), sorted(s_out.terms))
    for name in s_out.terms:
        _close(d_out.terms[name], s_out.terms[name], f"step {step} term {name}")
    d_params, s_params = dict(dense.named_parameters()), dict(sparse.named_parameters())
    assert d_params.keys() == s_params.keys()
    # relative to the largest gradient entry of the model: a conv bias before BatchNorm has an exactly-0
    # gradient, so its float noise (1e-17) has no relative precision of its own
    scale = max(float(p.grad.abs().max()) for p in d_params.values() if p.grad is not None)
    for name, p in d_params.items():
        q = s_params[name]
        assert (p.grad is None) == (q.grad is None), (step, name)
        if p.grad is not None:
            _close(p.grad, q.grad, f"step {step} grad {name}", scale)
    for obj, optimiser in zip((dense, sparse), optimisers):
        optimiser.step()
        obj.after_optimizer_step(step)
    if logged_steps is None:  # every buffer equal after every step (skipped pool rows are only compared where read)
        d_state, s_state = _state(dense), _state(sparse)
        assert d_state.keys() == s_state.keys()
        for name, value in d_state.items():
            _close(value.double(), s_state[name].double(), f"after step {step}: buffer {name}")
    history.append({name: float(value) for name, value in d_out.terms.items()})


MONA_FLAGS = [
    ("mona", {}),
    ("arco_sg", {}),
    ("arco_sag", {}),
    ("arco_sg", {"sampler_grouping": "spatial"}),
    ("mona", {"entropy_source": "teacher"}),
    ("mona", {"u2pl_negative_mask": "paper"}),
    ("mona", {"valid_class_indexing": "fixed", "u2pl_negative_mask": "paper"}),
    ("mona", {"nn_loss_grad": "student_pull"}),
    ("mona", {"nn_pool_resolution": "full", "nn_loss_grad": "student_pull"}),
    ("mona", {"nn_pool_resolution": "full"}),
    ("mona", {"contrast_weight": 0.0}),
    ("mona", {"nn_weight": 0.0}),
    ("mona", {"eqv_weight": 0.0, "unsup_weight": 0.0}),
]


@pytest.mark.parametrize("method, flags", MONA_FLAGS, ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in f.items()) or 'released'}" for m, f in MONA_FLAGS])
def test_mona_arco_sparse_matches_dense_smoke(method, flags):
    params, patch, channels = _profile_params(method, "smoke")
    history = run_pair(method_overrides(method, PROFILES["smoke"])["objective"], {**params, **flags}, patch, channels)
    if flags.get("contrast_weight", 1.0) > 0:
        assert any(row["contrast"] != 0 for row in history), "the contrast never ran: the comparison would be vacuous"


@pytest.mark.parametrize("method, flags", [("mona", {}), ("arco_sag", {"u2pl_negative_mask": "paper"}),
                                           ("mona", {"nn_loss_grad": "student_pull"})],
                         ids=["mona", "arco_sag-paper", "mona-student_pull"])
def test_mona_arco_sparse_matches_dense_quick(method, flags):
    params, patch, channels = _profile_params(method, "quick")
    history = run_pair(method_overrides(method, PROFILES["quick"])["objective"], {**params, **flags}, patch, channels, steps=2)
    assert any(row["contrast"] != 0 for row in history)


ACTION_CASES = [
    ("smoke", {}), ("smoke", {"sampler": "stratified"}),
    ("smoke", {"sampler": "stratified_antithetic", "sampler_grouping": "spatial"}),
    ("smoke", {"unsup_weight": 0.0}), ("smoke", {"anco_weight": 0.0}),
    ("quick", {}), ("quick", {"sampler": "stratified"}),
]


@pytest.mark.parametrize("size, flags", ACTION_CASES,
                         ids=[f"{size}-{'-'.join(f'{k}={v}' for k, v in f.items()) or 'released'}" for size, f in ACTION_CASES])
def test_action_sparse_matches_dense(size, flags):
    params, patch, channels = _profile_params("action", size)
    history = run_pair("action", {**params, **flags}, patch, channels, steps=2 if size == "quick" else STEPS)
    if flags.get("anco_weight", 1.0) > 0:
        assert any(row["anco"] != 0 for row in history), "L_anco never ran: the comparison would be vacuous"


@pytest.mark.parametrize("resolution", ["pooled", "full"])
def test_nn_term_only_at_logged_steps_keeps_training_and_the_pool_read_identical_to_dense_every_step(resolution):
    """Released L_nn has no gradient: computed at logged steps only, with the pool rows those steps read.
    Pool of 8 rows, 4 unlabelled images per step: rows of step s are read at s+1 and s+2 at most; a log row
    after step 5 only. Reference: dense, every step computed. At full resolution the sparse path's pool is
    compact (methods/nn_pool.py): it stores the teacher pyramids of steps 3 and 4 and builds no teacher rows
    before the logged step."""
    params, patch, channels = _profile_params("mona", "smoke")
    params = {**params, "nn_pool_capacity": 8, "nn_topk": 3}
    if resolution == "full":
        params["nn_pool_resolution"] = "full"
    schedule = lambda step, max_steps: step == 5  # noqa: E731
    dense, sparse = _pair("mona", params, channels)
    sparse.logged_steps = schedule
    computed = []
    original = sparse._rows_for_pool

    def spy(source):
        computed.append(current)
        return original(source)

    sparse._rows_for_pool = spy
    optimisers = [torch.optim.SGD(o.trainable_parameters(), lr=0.05) for o in (dense, sparse)]
    for step in range(6):
        current = step
        outs = []
        for obj, optimiser in zip((dense, sparse), optimisers):
            torch.manual_seed(1000 + step)
            out = obj.loss(_batch(step, patch), step, 20)
            optimiser.zero_grad(set_to_none=True)
            out.total.backward()
            optimiser.step()
            obj.after_optimizer_step(step)
            outs.append(out)
        _close(outs[0].total, outs[1].total, f"step {step} total")
        assert ("nn" in outs[1].terms) == (step == 5)
        if step == 4:  # the pool as step 5 reads it
            _close(dense.pool_rows(), sparse.pool_rows(), "pool read at the logged step")
    _close(outs[0].terms["nn"], outs[1].terms["nn"], "L_nn at the logged step")
    # rows for the pool (3, 4: pooled only) and for the term (5: student and teacher)
    assert sorted(set(computed)) == ([3, 4, 5] if resolution == "pooled" else [5]), computed


def test_logs_after_is_the_engine_schedule():
    assert [s for s in range(12) if logs_after(s, 12, 5)] == [4, 9, 11]
    assert [s for s in range(10) if logs_after(s, 10, 4, 3)] == [2, 3, 5, 7, 8, 9]


@pytest.mark.parametrize("g", [5, 12])
def test_sparse_rows_means_and_pools_equal_the_dense_maps(g):
    """The building blocks at odd sizes: pooling that does not divide the grid, points on the border."""
    from methods.heads import ActionProjectionHead, LinearPredictor, MonaFeatureExtractor

    torch.manual_seed(3)
    channels = (16, 8, 8, 4, 4)
    pyramid = [torch.randn(3, c, 48 // 2 ** (4 - i), 48 // 2 ** (4 - i), dtype=torch.float64, requires_grad=True)
               for i, c in enumerate(channels)]
    fe, predictor = MonaFeatureExtractor(channels).double(), LinearPredictor(sum(channels)).double()
    head = ActionProjectionHead(channels, 24).double()
    labels = torch.randint(0, 4, (3, 48, 48))
    valid = torch.rand(3, 48, 48) > 0.4
    border = torch.tensor([0, 47, 48 * 47, 48 * 48 - 1, 2 * 48 * 48 + 47])
    positions = torch.cat([border, torch.randint(0, 3 * 48 * 48, (5000,))])
    for dense_map, sparse in ((predictor(fe(pyramid)), SparseMonaReps(pyramid, fe, predictor)),
                              (head(pyramid, size=(48, 48)), SparseActionReps(pyramid, head, (48, 48)))):
        dense = DenseReps(dense_map)
        _close(dense.rows(positions), sparse.rows(positions), "rows")
        for a, b in zip(dense.class_means(labels, valid, 4), sparse.class_means(labels, valid, 4)):
            _close(a.double(), b.double(), "class means")
        if isinstance(sparse, SparseMonaReps):
            _close(dense.pooled(g), sparse.pooled(g), "pooled")
        # gradients of a functional mixing all three reads
        weights = list(fe.parameters()) + list(predictor.parameters()) + list(head.parameters()) + pyramid
        probe = lambda src: (src.rows(positions[:300]) ** 2).sum() + src.class_means(labels, valid, 4)[0].sum()  # noqa: E731
        d_grads = torch.autograd.grad(probe(DenseReps(dense_map)), weights, allow_unused=True, retain_graph=True)
        s_grads = torch.autograd.grad(probe(sparse), weights, allow_unused=True)
        scale = max(float(a.abs().max()) for a in d_grads if a is not None)
        for a, b in zip(d_grads, s_grads):
            assert (a is None) == (b is None)
            if a is not None:
                _close(a, b, "gradient", scale)


def _action_pyramid_and_head(seed: int, dtype: torch.dtype, requires_grad: bool):
    """A 3-image, 48 x 48 pyramid whose two coarse levels are wide enough to be projected first
    (``SparseActionReps._projects_first``), and ACTION's head (24 channels) on it."""
    from methods.heads import ActionProjectionHead

    torch.manual_seed(seed)
    channels = (64, 32, 8, 4, 4)
    pyramid = [torch.randn(3, c, 48 // 2 ** (4 - i), 48 // 2 ** (4 - i), dtype=dtype, requires_grad=requires_grad)
               for i, c in enumerate(channels)]
    return pyramid, ActionProjectionHead(channels, 24).to(dtype).requires_grad_(requires_grad)


@pytest.mark.parametrize("with_grad", [True, False], ids=["grad", "no_grad"])
def test_action_rows_in_chunks_with_and_without_gradient_equal_the_dense_map(monkeypatch, with_grad):
    """ACTION's head at many points (as its relation-graph keys), the fine levels' im2col in several chunks: with a
    gradient (the chunks concatenated) and without (each chunk's product added into its rows in place), the coarse
    levels projected first."""
    from methods import pixel_reps

    pyramid, head = _action_pyramid_and_head(4, torch.float64, with_grad)
    positions = torch.cat([torch.tensor([0, 47, 48 * 47, 48 * 48 - 1, 2 * 48 * 48 + 47]), torch.randint(0, 3 * 48 * 48, (3000,))])
    monkeypatch.setattr(pixel_reps, "_HEAD_CHUNK", 700)  # 5 chunks of fine-level columns
    dense_rows = DenseReps(head(pyramid, size=(48, 48))).rows(positions)
    sparse = SparseActionReps(pyramid, head, (48, 48))
    taps = [sparse.ops.row_taps[i].k * sparse.ops.col_taps[i].k for i in range(len(pyramid))]
    assert [i for i, p in enumerate(pyramid) if sparse._projects_first(p, taps[i], positions.numel())] == [0, 1]
    sparse_rows = sparse.rows(positions)
    _close(dense_rows, sparse_rows, "rows")
    assert sparse_rows.requires_grad == with_grad
    if with_grad:
        weights = list(head.parameters()) + pyramid
        d_grads = torch.autograd.grad((dense_rows ** 2).sum(), weights)
        s_grads = torch.autograd.grad((sparse_rows ** 2).sum(), weights)
        scale = max(float(a.abs().max()) for a in d_grads)
        for a, b in zip(d_grads, s_grads):
            _close(a, b, "gradient", scale)


def test_action_rows_without_gradient_run_under_bf16_autocast_close_to_the_dense_map(monkeypatch):
    """``--amp bf16`` on the CPU: the keys' rows (no gradient, several im2col chunks added in place) take the
    autocast products' dtype; they must run and stay within bf16 rounding of float32."""
    from methods import pixel_reps

    pyramid, head = _action_pyramid_and_head(5, torch.float32, False)
    positions = torch.randint(0, 3 * 48 * 48, (3000,))
    monkeypatch.setattr(pixel_reps, "_HEAD_CHUNK", 700)
    with torch.no_grad():
        reference = DenseReps(head(pyramid, size=(48, 48))).rows(positions)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the UNet's pyramid comes out in bf16 there
            rows = SparseActionReps([level.bfloat16() for level in pyramid], head, (48, 48)).rows(positions)
    scale = float(reference.abs().max())
    torch.testing.assert_close(rows.float(), reference, rtol=0, atol=0.03 * scale)


@pytest.mark.parametrize("representation, resolution", [("dense", "pooled"), ("sparse", "pooled"), ("dense", "full"), ("sparse", "full")])
def test_nn_term_deferred_to_after_backward_equals_it_computed_in_loss(representation, resolution):
    """With ``defer_logged_terms`` (set by the engine's loop) MONA computes the released, gradient-free L_nn of a
    logged step in ``after_backward``, after the step's activations are freed, and writes that step's pool rows
    there: the same term, gradients and pool as computing it inside ``loss`` (docs/methods.md, 'L_nn after the
    backward pass'). Pool of 8 rows, 4 images a step, log rows after steps 2 and 5; dense and compact pools."""
    params, patch, channels = _profile_params("mona", "smoke")
    params = {**params, "nn_pool_capacity": 8, "nn_topk": 3}
    if resolution == "full":
        params["nn_pool_resolution"] = "full"
    pair = _pair("mona", params, channels, representations=(representation, representation))
    inline, deferred = pair
    deferred.defer_logged_terms = True
    for obj in pair:
        obj.logged_steps = lambda step, max_steps: step in (2, 5)
    optimisers = [torch.optim.SGD(o.trainable_parameters(), lr=0.05, momentum=0.9) for o in pair]
    for step in range(6):
        terms, grads = [], []
        for obj, optimiser in zip(pair, optimisers):
            torch.manual_seed(1000 + step)
            out = obj.loss(_batch(step, patch), step, 20)
            optimiser.zero_grad(set_to_none=True)
            out.total.backward()
            late = obj.after_backward(step)
            if obj is deferred:
                assert "nn" not in out.terms and set(late) == ({"nn"} if step in (2, 5) else set()), (step, sorted(out.terms), late)
            else:
                assert late == {}
            terms.append({**out.terms, **late})
            grads.append({name: p.grad for name, p in obj.named_parameters() if p.grad is not None})
            optimiser.step()
            obj.after_optimizer_step(step)
        assert terms[0].keys() == terms[1].keys() and ("nn" in terms[0]) == (step in (2, 5))
        for name in terms[0]:
            _close(terms[0][name], terms[1][name], f"step {step} term {name}")
        assert grads[0].keys() == grads[1].keys()
        for name in grads[0]:
            _close(grads[0][name], grads[1][name], f"step {step} grad {name}")
        _close(inline.pool_rows(), deferred.pool_rows(), f"pool after step {step}")
        assert int(inline.nn_pool_pointer) == int(deferred.nn_pool_pointer)
    assert terms[0]["nn"] > 0


def test_a_deferred_nn_term_left_pending_is_an_error():
    """A caller that sets ``defer_logged_terms`` must call ``after_backward``: the next ``loss`` refuses to run
    on a pool that lacks the logged step's rows."""
    from methods.errors import ConfigError

    params, patch, channels = _profile_params("mona", "smoke")
    objective = build_objective("mona", build_model("unet", num_classes=4, channels=channels).double(),
                                {**params, "nn_pool_capacity": 8}).double()
    objective.defer_logged_terms = True
    objective.loss(_batch(0, patch), 0, 20)  # no schedule set: every step is logged
    with pytest.raises(ConfigError, match="after_backward"):
        objective.loss(_batch(1, patch), 1, 20)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_combine_rows_csr_bag_and_gather_paths_equal_the_dense_weighted_sum(device, monkeypatch):
    """The three implementations of ``combine_rows`` (CSR on the CPU, ``embedding_bag`` on a GPU, chunked gather
    elsewhere) against the dense sum ``W @ table`` with W (M, R) built entry by entry: values and the table's
    gradient, float64, repeated indices within a row included; and an empty point list."""
    import methods.pixel_reps as pixel_reps

    monkeypatch.setattr(pixel_reps, "_CHUNK_FLOATS", 40)  # several chunks in the gather path
    generator = torch.Generator().manual_seed(3)
    table = torch.randn(30, 5, dtype=torch.float64, generator=generator).to(device).requires_grad_(True)
    index = torch.randint(0, 30, (17, 4), generator=generator).to(device)
    index[0] = index[0, 0]  # one row reads the same table row four times
    weight = torch.rand(17, 4, dtype=torch.float64, generator=generator).to(device)
    dense = torch.zeros(17, 30, dtype=torch.float64, device=device)
    dense.index_put_((torch.arange(17, device=device).repeat_interleave(4), index.reshape(-1)), weight.reshape(-1), accumulate=True)
    expected = dense @ table
    upstream = torch.randn(17, 5, dtype=torch.float64, generator=generator).to(device)
    expected_grad, = torch.autograd.grad(expected, table, upstream)
    paths = {"bag": pixel_reps._bag_rows, "gather": pixel_reps._gathered_rows, "dispatch": pixel_reps.combine_rows}
    if device == "cpu":
        paths["csr"] = pixel_reps._csr_rows
    for name, rows in paths.items():
        got = rows(table, index, weight)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
        grad, = torch.autograd.grad(got, table, upstream)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name} gradient: {m}")
        assert rows(table, index[:0], weight[:0]).shape == (0, 5)


@pytest.mark.parametrize("search", [False, True, None])
def test_mask_ranks_give_the_nonzero_positions_on_both_paths(search):
    """Ranks drawn within a mask become the same flat positions through the CPU's indexed nonzero list and the
    accelerators' binary search in the cumsum (``methods.pixel_reps.MaskRanks``): every rank, repeated ranks, any
    shape, and a mask whose first and last entries are set."""
    from methods.pixel_reps import MaskRanks

    generator = torch.Generator().manual_seed(5)
    mask = torch.rand(4 * 9 * 7, generator=generator) < 0.3
    mask[0] = mask[-1] = True
    expected = mask.nonzero().squeeze(1)
    ranks = torch.randint(0, expected.numel(), (6, 11), generator=generator)
    pool = MaskRanks(mask, search=search)
    assert torch.equal(pool.positions(torch.arange(expected.numel())), expected)
    assert torch.equal(pool.positions(ranks), expected[ranks])


def test_sparse_rows_deduplicate_long_point_lists_as_torch_unique():
    """The per-pixel marks that deduplicate long point lists (``_SparseReps._distinct``) give ``torch.unique``'s
    sorted positions and inverse; the rows read through them equal the rows read point by point."""
    from methods.pixel_reps import _DEDUPLICATE_FROM

    channels, size = (4, 8, 16, 32, 64), 32
    torch.manual_seed(0)
    model = build_model("unet", num_classes=4, channels=channels).double()
    head = build_objective("action", model, {"repr_dim": 16}).head.double()
    pyramid = model(torch.rand(3, 1, size, size, dtype=torch.float64)).pyramid
    reps = SparseActionReps(pyramid, head, (size, size))
    points = torch.randint(0, 3 * size * size, (_DEDUPLICATE_FROM + 17,), generator=torch.Generator().manual_seed(2))
    unique, inverse = reps._distinct(points)
    expected_unique, expected_inverse = torch.unique(points, return_inverse=True)
    assert torch.equal(unique, expected_unique) and torch.equal(inverse, expected_inverse)
    assert unique.numel() < points.numel()  # the list repeats pixels: the deduplicated read is the one under test
    with torch.no_grad():
        torch.testing.assert_close(reps.rows(points), reps._rows(points), rtol=1e-12, atol=1e-12)


def test_class_means_and_the_pseudo_label_weight_stay_finite_under_fp16_autocast():
    """``--amp fp16`` at the paper size: the sparse class means summed pyramid features over every pixel of a class
    before the head, in half precision, and a 256 x 256 image's 65 536 confident pixels were counted in half precision:
    both overflowed to inf, so MONA, ARCO and ACTION stopped at their first log row with a NaN loss (the GPU-path
    audit). CPU autocast stands in for CUDA's here."""
    from methods.heads import ActionProjectionHead, LinearPredictor, MonaFeatureExtractor
    from methods.losses import pseudo_label_loss

    torch.manual_seed(0)
    channels, size = (8, 4, 4, 4, 4), 256
    pyramid = [torch.rand(2, c, size // 2 ** (4 - i), size // 2 ** (4 - i)) + 1.0 for i, c in enumerate(channels)]
    labels = torch.zeros(2, size, size, dtype=torch.int64)  # one class over all 131 072 pixels
    valid = torch.ones(2, size, size, dtype=torch.bool)
    fe, predictor, head = MonaFeatureExtractor(channels), LinearPredictor(sum(channels)), ActionProjectionHead(channels, 16)
    with torch.no_grad():
        reference = [SparseMonaReps(pyramid, fe).class_means(labels, valid, 2)[0],
                     SparseActionReps(pyramid, head, (size, size)).class_means(labels, valid, 2)[0],
                     DenseReps(predictor(fe(pyramid))).class_means(labels, valid, 2)[0]]
        with torch.autocast("cpu", dtype=torch.float16):
            half = [level.half() for level in pyramid]  # the UNet's pyramid comes out in half precision there
            means = [SparseMonaReps(half, fe).class_means(labels, valid, 2)[0],
                     SparseActionReps(half, head, (size, size)).class_means(labels, valid, 2)[0],
                     DenseReps(predictor(fe(half)).half()).class_means(labels, valid, 2)[0]]
    for mean, expected in zip(means, reference):
        assert torch.isfinite(mean).all()
        torch.testing.assert_close(mean.float(), expected, rtol=0.02, atol=0.02)
    logits = torch.randn(2, 4, size, size).half()
    pseudo = torch.zeros(2, size, size, dtype=torch.int64)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = pseudo_label_loss(logits, pseudo, torch.ones(2, size, size), 0.97)
    assert torch.isfinite(loss) and float(loss) == pytest.approx(float(pseudo_label_loss(logits.float(), pseudo, torch.ones(2, size, size), 0.97)), rel=1e-2)


def test_an_all_zero_key_gives_a_finite_contrast_under_fp16_autocast():
    """MONA's bank starts with all-zero entries; in half precision the cosine's norm floor (1e-8) rounds to 0 and such a
    key gave 1/0 and a NaN loss under fp16 autocast wherever the norm is not promoted (found with
    `bench_gpu.py --device cpu --amp fp16`). Full precision is unchanged."""
    from methods.contrast import pixel_info_nce

    torch.manual_seed(0)
    anchors, prototype = torch.randn(8, 16), torch.randn(16)
    negatives = torch.randn(8, 32, 16)
    negatives[:, :5] = 0.0  # empty bank entries
    reference = pixel_info_nce(anchors, prototype, negatives, 0.5)
    with torch.autocast("cpu", dtype=torch.float16):
        half = pixel_info_nce(anchors.half(), prototype, negatives.half(), 0.5)
    assert torch.isfinite(half) and float(half) == pytest.approx(float(reference), rel=1e-2)
