"""Class-factorised softmax: kernel against its twin, normalisation, gradients, resumable training."""

import numpy as np
import pytest

import tests.naive_language as naive
from v1motion.models.language.data import Vocabulary
from v1motion.models.language.kernels import WordClasses, class_log_probs_all, class_softmax
from v1motion.models.language.rglm import (
    R_MAX,
    LinearRecurrentLM,
    dynamic_step,
    gradient_rms,
    loss_and_grads,
    rms_dynamic_step,
)


def _vocab(V):
    return Vocabulary(["<unk>", "<eos>", *[f"w{i}" for i in range(V - 2)]])


def _class_params(rng, V, H, C, recurrence="diagonal", tied=True, dtype=np.float64):
    p = LinearRecurrentLM(n_hidden=H, recurrence=recurrence, tied=tied).init_params(V)
    p["Wc"] = np.zeros((C, H))
    p["bc"] = np.zeros(C)
    return {
        k: None if v is None else (v + 0.3 * rng.standard_normal(v.shape)).astype(dtype)
        for k, v in p.items()
    }


def test_frequency_binning_gives_non_empty_classes_of_contiguous_rank():
    rng = np.random.default_rng(0)
    counts = rng.zipf(1.5, 500).astype(float)
    wc = WordClasses.from_counts(counts, 20)
    assert wc.n_classes == 20
    assert (np.diff(wc.ptr) > 0).all()
    # more frequent words never sit in a later class than rarer ones
    order = np.argsort(-counts, kind="stable")
    assert (np.diff(wc.word_class[order]) >= 0).all()
    # the frequent head is in small classes, the rare tail in large ones
    sizes = np.diff(wc.ptr)
    assert sizes[0] < sizes[-1]
    # members/ptr/position are consistent
    for k in range(20):
        mk = wc.members[wc.ptr[k] : wc.ptr[k + 1]]
        assert (wc.word_class[mk] == k).all()
        np.testing.assert_array_equal(wc.position[mk], np.arange(mk.size))
    # edge cases: one word per class, and one class for everything
    np.testing.assert_array_equal(WordClasses.from_counts(np.ones(5), 5).word_class, np.arange(5))
    assert WordClasses.from_counts(np.ones(5), 1).n_classes == 1
    with pytest.raises(ValueError, match="n_classes"):
        WordClasses.from_counts(np.ones(5), 6)
    with pytest.raises(ValueError, match="no words"):
        WordClasses(np.array([0, 2, 2]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_class_softmax_matches_twin_and_is_normalised(rng, dtype):
    V, H, C, N = 23, 5, 4, 40
    wc = WordClasses.from_counts(rng.integers(1, 100, V).astype(float), C)
    u = rng.standard_normal((N, H)).astype(dtype)
    W = rng.standard_normal((V, H)).astype(dtype)
    c = rng.standard_normal(V).astype(dtype)
    Wc = rng.standard_normal((C, H)).astype(dtype)
    bc = rng.standard_normal(C).astype(dtype)
    y = rng.integers(0, V, N)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    expected = naive.class_softmax(u, y, W, c, Wc, bc, wc.word_class)
    np.testing.assert_allclose(
        class_softmax(u, y, W, c, Wc, bc, wc, grads=False), expected, rtol=tol, atol=tol
    )
    np.testing.assert_allclose(
        class_softmax(u, y, W, c, Wc, bc, wc)[0], expected, rtol=tol, atol=tol
    )
    full = class_log_probs_all(u, W, c, Wc, bc, wc)
    np.testing.assert_allclose(np.exp(full).sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(full[np.arange(N), y], expected, rtol=tol, atol=tol)
    # a non-contiguous view of the features gives the same answer
    big = np.repeat(u, 2, axis=0)[::2]
    np.testing.assert_allclose(
        class_softmax(big, y, W, c, Wc, bc, wc, grads=False), expected, rtol=tol, atol=tol
    )


@pytest.mark.parametrize("recurrence", ["diagonal", "full"])
@pytest.mark.parametrize("tied", [True, False])
def test_class_softmax_bptt_gradients_match_finite_differences(rng, recurrence, tied):
    V, H, C, T, B = 11, 4, 3, 4, 3
    wc = WordClasses.from_counts(rng.integers(1, 50, V).astype(float), C)
    p = _class_params(rng, V, H, C, recurrence, tied)
    X, Y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    h0 = rng.standard_normal((B, H))
    m_in = (rng.random((T, B, H)) > 0.3) / 0.7
    m_h = (rng.random((T, B, H)) > 0.3) / 0.7

    def loss():
        return loss_and_grads(p, X, Y, h0, m_in, m_h, classes=wc)[0]

    _, grads, _ = loss_and_grads(p, X, Y, h0, m_in, m_h, classes=wc)
    expected_keys = {"E", "P", "r", "c", "Wc", "bc"} | (set() if tied else {"W"})
    assert set(grads) == expected_keys
    eps = 1e-6
    for name, g in grads.items():
        a = p[name]
        num = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            up = loss()
            a[idx] = old - eps
            down = loss()
            a[idx] = old
            num[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8, err_msg=name)


def _class_model(rng, V=13, H=5, C=4):
    model = LinearRecurrentLM(n_hidden=H, n_classes=C)
    model.vocab_ = _vocab(V)
    model.classes_ = WordClasses.from_counts(rng.integers(1, 50, V).astype(float), C)
    model.params_ = _class_params(rng, V, H, C, dtype=np.float32)
    return model


def test_class_model_next_word_sums_to_one_and_matches_stream(rng):
    model = _class_model(rng)
    context = rng.integers(0, 13, 9)
    logp = model.next_word_log_probs(context)
    assert np.exp(logp).sum() == pytest.approx(1.0, abs=1e-6)
    for w in range(13):
        assert model.log_probs(np.append(context, w))[-1] == pytest.approx(logp[w], abs=1e-5)


def test_class_dynamic_step_equals_sgd_and_scores_before_updating(rng):
    V, H, C, n, lr = 13, 4, 4, 6, 0.3
    wc = WordClasses.from_counts(rng.integers(1, 50, V).astype(float), C)
    p = _class_params(rng, V, H, C)
    X, Y = rng.integers(0, V, n), rng.integers(0, V, n)
    h0 = rng.standard_normal((1, H))
    loss, grads, hT, lp = loss_and_grads(
        p, X[:, None], Y[:, None], h0, return_logp=True, classes=wc
    )
    expected = {k: p[k] - lr * n * g for k, g in grads.items()}
    expected["r"] = np.clip(expected["r"], -R_MAX, R_MAX)
    logp, h_fast = dynamic_step(p, X, Y, h0, lr, max_grad_norm=None, classes=wc)
    np.testing.assert_allclose(logp, lp[:, 0], rtol=1e-12)
    np.testing.assert_allclose(h_fast, hT, rtol=1e-12)
    for k, v in expected.items():
        np.testing.assert_allclose(p[k], v, rtol=1e-10, atol=1e-12, err_msg=k)
    # dynamic evaluation of a class model: every position still gets one distribution
    model = _class_model(rng, V=7, H=4, C=3)
    naive.assert_each_position_sums_to_one(
        model, rng.integers(0, 7, 30), (1, 12, 29), learning_rate=0.5, chunk=10
    )


def test_class_rms_dynamic_step_equals_krause_update_and_scores_before_updating(rng):
    V, H, C, n, lr = 13, 4, 4, 6, 0.03
    wc = WordClasses.from_counts(rng.integers(1, 50, V).astype(float), C)
    p = _class_params(rng, V, H, C)
    fitted = _class_params(rng, V, H, C)
    names = [k for k, v in p.items() if v is not None]
    rates = {k: rng.uniform(0.0, 1.0, p[k].shape) for k in names}
    inv = {k: rng.uniform(0.5, 2.0, p[k].shape) for k in names}
    X, Y = rng.integers(0, V, n), rng.integers(0, V, n)
    h0 = rng.standard_normal((1, H))
    _, grads, hT, lp = loss_and_grads(p, X[:, None], Y[:, None], h0, return_logp=True, classes=wc)
    expected = {k: p[k] + rates[k] * (fitted[k] - p[k]) - lr * grads[k] * inv[k] for k in names}
    expected["r"] = np.clip(expected["r"], -R_MAX, R_MAX)
    logp, h = rms_dynamic_step(p, fitted, X, Y, h0, lr, rates, inv, classes=wc)
    np.testing.assert_allclose(logp, lp[:, 0], rtol=1e-12)
    np.testing.assert_allclose(h, hT, rtol=1e-12)
    for k in names:
        np.testing.assert_allclose(p[k], expected[k], rtol=1e-10, atol=1e-12, err_msg=k)
    model = _class_model(rng, V=7, H=4, C=3)
    rms = gradient_rms(
        model.params_, rng.integers(0, 7, 200), chunk=5, batch=4, classes=model.classes_
    )
    assert set(rms) == {"E", "P", "r", "c", "Wc", "bc"}
    naive.assert_each_position_sums_to_one(
        model,
        rng.integers(0, 7, 30),
        (1, 12, 29),
        learning_rate=1e-3,
        chunk=10,
        decay=0.01,
        rms=rms,
    )


def test_class_model_save_load_round_trip(rng, tmp_path):
    model = _class_model(rng)
    back = LinearRecurrentLM.load(model.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(back.classes_.word_class, model.classes_.word_class)
    seq = rng.integers(0, 13, 30)
    np.testing.assert_allclose(back.log_probs(seq), model.log_probs(seq), atol=1e-2)


@pytest.mark.parametrize("average_from", [None, 2])
@pytest.mark.parametrize("n_classes", [None, 3])
@pytest.mark.parametrize("stops", [[1], [7, 3], [11], [5, 5, 5, 5]])
def test_training_stopped_anywhere_resumes_to_the_uninterrupted_result(
    rng, tmp_path, n_classes, stops, average_from
):
    # 3 epochs of 6 windows: the stops land inside an epoch, on an epoch boundary (6, 12) and
    # several times in one run; with averaging from epoch 2 also inside the averaged epochs
    V = 10
    seq = rng.integers(0, V, 6 * 4 * 5 + 1)
    kw = dict(
        n_hidden=4,
        n_samples=5,
        n_classes=n_classes,
        batch_size=4,
        bptt=5,
        seed=3,
        n_epochs=3,
        average_from=average_from,
    )
    valid = seq[:100]
    straight_ckpt = tmp_path / "straight.npz"
    straight = LinearRecurrentLM(**kw).fit(seq, _vocab(V), valid=valid, checkpoint=straight_ckpt)
    ckpt = tmp_path / "ckpt.npz"
    for k in stops:
        part = LinearRecurrentLM(**kw).fit(
            seq, _vocab(V), valid=valid, checkpoint=ckpt, stop_after=k
        )
        assert ckpt.exists()
    assert not part.finished_ or sum(stops) >= 18
    resumed = LinearRecurrentLM(**kw).fit(seq, _vocab(V), valid=valid, checkpoint=ckpt)
    assert resumed.finished_
    assert [e["epoch"] for e in resumed.history_] == [1, 2, 3]
    for key in ("valid_ppl", "valid_ppl_raw", "averaged_updates", "lr"):
        assert [e.get(key) for e in resumed.history_] == [e.get(key) for e in straight.history_]
    assert [e.get("averaged_updates") for e in straight.history_] == (
        [None, None, None] if average_from is None else [None, 6, 12]
    )
    for name, v in straight.params_.items():
        if v is not None:
            np.testing.assert_array_equal(resumed.params_[name], v, err_msg=name)
    with np.load(ckpt) as a, np.load(straight_ckpt) as b:
        assert sorted(a.files) == sorted(b.files)
        assert any(k.startswith("a_") for k in a.files) == (average_from is not None)
        for k in a.files:
            if k.startswith(("p_", "a_", "b_")):
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_checkpoint_is_written_at_every_epoch_end(rng, tmp_path, monkeypatch):
    """Even when the timer never fires: a stop during the next epoch loses no finished epoch."""
    V = 10
    seq = rng.integers(0, V, 6 * 4 * 5 + 1)
    saved = []
    save = LinearRecurrentLM._save_checkpoint
    monkeypatch.setattr(
        LinearRecurrentLM,
        "_save_checkpoint",
        lambda self, path, state: (
            saved.append((state["epoch"], state["pos"])) or save(self, path, state)
        ),
    )
    LinearRecurrentLM(n_hidden=4, n_samples=5, batch_size=4, bptt=5, seed=3, n_epochs=3).fit(
        seq, _vocab(V), valid=seq[:100], checkpoint=tmp_path / "ckpt.npz", checkpoint_every=1e9
    )
    assert (1, 0) in saved and (2, 0) in saved and saved[-1] == (3, 0)


def test_train_command_round_trips_through_the_cli_parser():
    from v1motion.service.cli import build_parser
    from v1motion.service.commands.lm import train_command

    argv = [
        "lm",
        "train",
        "--out",
        "runs/x.npz",
        "--checkpoint",
        "runs/x.ckpt.npz",
        "--hidden",
        "300",
        "--untied",
        "--dropout-hidden",
        "0.5",
        "--dropout-words",
        "0.1",
        "--classes",
        "50",
        "--lr",
        "0.003",
        "--epochs",
        "7",
        "--time-limit",
        "60",
        "--average-from",
        "9",
        "--hold-lr-while-averaging",
        "--int8",
        "--float16-p",
        "--threads",
        "2",
    ]
    args = build_parser().parse_args(argv)
    command = train_command(args)
    assert command.startswith("v1motion lm train ")
    again = build_parser().parse_args(["lm", *command.replace("\\\n", " ").split()[2:]])
    for key in (
        "out",
        "checkpoint",
        "hidden",
        "untied",
        "dropout_input",
        "dropout_hidden",
        "dropout_words",
        "classes",
        "samples",
        "lr",
        "epochs",
        "seed",
        "max_norm",
        "anneal",
        "int8",
        "float16_p",
        "threads",
        "float32",
        "average_from",
        "hold_lr_while_averaging",
    ):
        assert getattr(again, key) == getattr(args, key), key
    assert "--time-limit" not in command  # where a run pauses does not change its result
    assert "--threads" not in train_command(
        build_parser().parse_args(["lm", "train", "--out", "x"])
    )
    assert again.average_from == 9
    default = build_parser().parse_args(["lm", "train", "--out", "runs/x.npz"])
    assert default.average_from is None and "--average-from" not in train_command(default)
    assert again.hold_lr_while_averaging and not default.hold_lr_while_averaging
    assert "--hold-lr-while-averaging" not in train_command(default)
    assert again.dropout_words == 0.1 and "--dropout-words" not in train_command(default)


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_model_card_carries_the_command_and_the_table(rng, tmp_path, storage):
    from v1motion.models.reports.language import write_card

    model = _class_model(rng)
    path = model.save(
        tmp_path / "m.npz",
        meta={"command": "v1motion lm train --hidden 5", "valid_ppl": 12.5, "epochs_done": 3},
        int8=storage == "int8",
    )
    rows = [
        {"model": "R-GLM", "ppl": 11.25, "target": 102.0},
        {"model": "RNN", "ppl": float("nan"), "target": 124.7},
    ]
    text = write_card(tmp_path / "card.md", path, rows).read_text()
    assert "v1motion lm train --hidden 5" in text
    assert "Valid 12.5" in text and "Test 11.2" in text
    assert "4 frequency-binned classes" in text
    assert "| RNN | — | 124.7 |" in text
    stored = "int8 with a float32 scale per word" if storage == "int8" else "float16"
    assert f"stored {stored})" in text and f"the {storage} weights as shipped" in text
    assert "Polyak" not in text
    assert "`r`, `P` and the class vectors and biases are float32" in text
    half = write_card(tmp_path / "card.md", model.save(tmp_path / "h.npz", half_p=True), rows)
    assert "`P` is float16; `r` and the class vectors and biases are float32" in half.read_text()
    model.average_from = 9  # trained with averaging: the card says what was kept
    text = write_card(tmp_path / "card.md", model.save(tmp_path / "m.npz"), rows).read_text()
    assert "from epoch 9 on, the running mean of the weights over every update" in text


def test_the_report_writes_the_table_and_the_timescale_figure(rng, tmp_path):
    import matplotlib

    from v1motion.models.reports.language import write_report

    backend = matplotlib.get_backend()
    path = _class_model(rng).save(tmp_path / "m.npz", meta={})
    rows = [{"model": "R-GLM", "ppl": 11.25, "target": 102.0, "note": "tiny"}]
    write_report(tmp_path / "report", rows, path)
    assert "| R-GLM | 11.2 | 102.0 | tiny |" in (tmp_path / "report" / "ptb_table.md").read_text()
    assert (tmp_path / "report" / "timescales.png").stat().st_size > 1000
    assert matplotlib.get_backend() == backend
