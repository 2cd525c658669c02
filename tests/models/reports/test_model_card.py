"""The ss-RNN's model card (``v1motion analyze --model-card``): what it says of the weights it is given."""

import json
from pathlib import Path

from v1motion.models import WEIGHTS_DIR
from v1motion.models.reports.model_card import write_model_card

REPORT = Path(__file__).resolve().parents[3] / "docs" / "report" / "report.json"


def _card(tmp_path, control: str) -> str:
    path = tmp_path / "card.md"
    report = json.loads(REPORT.read_text())
    write_model_card(path, WEIGHTS_DIR / "ssrnn_default.npz", WEIGHTS_DIR / control, report)
    return path.read_text()


def test_the_shipped_card_is_what_the_shipped_weights_and_report_make(tmp_path):
    assert (
        _card(tmp_path, "ssrnn_shuffled_control.npz") == (WEIGHTS_DIR / "MODEL_CARD.md").read_text()
    )


def test_a_control_not_trained_time_shuffled_is_not_called_one(tmp_path):
    """Any control given was described as trained on time-shuffled sequences."""
    card = _card(tmp_path, "ssrnn_default.npz")
    assert "shuffled in time" not in card
    assert "The control given (`ssrnn_default.npz`) was not trained on time-shuffled" in card
