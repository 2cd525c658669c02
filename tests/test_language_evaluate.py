"""The PTB table machinery: KN5 reproduces the published baseline; mixtures never hurt."""

import numpy as np
import pytest

from models.datasets import shared_data_dir
from models.language.data import load_ptb
from models.language.evaluate import TARGETS, plot_timescales, ptb_table
from models.language.rglm import LinearRecurrentLM

pytestmark = [pytest.mark.slow]
skip_no_ptb = pytest.mark.skipif(
    not (shared_data_dir() / "ptb" / "ptb.train.txt.gz").exists(), reason="no Penn Treebank"
)


@skip_no_ptb
def test_table_kn5_matches_published_and_mixtures_help(tmp_path):
    vocab, _ = load_ptb()
    model = LinearRecurrentLM(n_hidden=4, seed=0)
    model.vocab_ = vocab
    model.params_ = model.init_params(len(vocab))  # untrained: unigram bias only
    path = model.save(tmp_path / "tiny.npz")
    rows = {r["model"]: r for r in ptb_table(path, dynamic=False, baselines=True)}
    # our modified-KN 5-gram against the published 141.2 (Mikolov et al. 2011)
    assert rows["KN5"]["ppl"] == pytest.approx(TARGETS["KN5"], rel=0.01)
    assert rows["KN5 + cache"]["ppl"] < rows["KN5"]["ppl"]
    assert rows["R-GLM + KN5 + cache"]["ppl"] <= rows["KN5 + cache"]["ppl"] * 1.001
    assert np.isnan(rows["RNN"]["ppl"])
    png = plot_timescales(model, tmp_path / "tau.png")
    assert png.stat().st_size > 1000
