"""What the language model's users are told when the weights or the table are not what they expect."""

import numpy as np
import pytest

from v1motion.service.cli import main


def test_a_file_that_is_not_weights_is_named_and_refused_without_numpys_pickle_advice(tmp_path):
    from v1motion.models.language.rglm import LinearRecurrentLM
    from v1motion.service.settings import Settings

    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    np.save(tmp_path / "one.npy", np.zeros(2))
    for name in ("x.json", "empty.npz", "other.npz", "one.npy"):
        path = tmp_path / name
        with pytest.raises(ValueError, match="is not a language-model weights file") as err:
            LinearRecurrentLM.load(path)
        assert name in str(err.value) and "allow_pickle" not in str(err.value)
        # the service refuses it with its settings (one line, exit status 2), not at its lifespan
        with pytest.raises(ValueError, match=f"V1MOTION_LM_WEIGHTS: .*{name} is not"):
            Settings(lm_weights=path)
        assert main(["lm", "score", "the", "--model", str(path)]) == 2


def test_the_printed_table_shows_test_targets_for_the_test_split_only():
    from v1motion.service.commands.lm import format_table

    rows = [
        {"model": "R-GLM", "ppl": 843.75, "target": 102.0},
        {"model": "RNN", "ppl": float("nan"), "target": 124.7},
    ]
    valid = format_table(rows, "valid").splitlines()
    assert valid[0].split() == ["model", "valid", "ppl"] and "102.0" not in "\n".join(valid)
    assert valid[2].split() == ["RNN", "—"]  # not nan
    assert format_table(rows, "test").splitlines()[1].split() == ["R-GLM", "843.75", "102.0"]
