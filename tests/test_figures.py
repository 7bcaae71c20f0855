"""The learning-curve figure is drawn from run logs (PNG + PDF), and says so when there is none."""

import json

from r2ec.report.figures import learning_figure


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_learning_figure_from_logs(tmp_path):
    runs = tmp_path / "runs"
    _write(runs / "ml" / "r2ec_no_reasoning" / "train_log.jsonl",
           [{"step": i, "item_loss": 3.9 - 0.01 * i, "elapsed_s": 5.0 * (i + 1)} for i in range(10)])
    _write(runs / "ml" / "r2ec_no_reasoning" / "valid_log.jsonl",
           [{"step": 5, "N@10": 0.01, "elapsed_s": 30.0}, {"step": 10, "N@10": 0.02, "elapsed_s": 60.0}])
    _write(runs / "ml" / "r2ec" / "train_log.jsonl",
           [{"step": i, "reward": 0.2 + 0.01 * i, "item_loss": 3.0, "elapsed_s": 9.0 * (i + 1)} for i in range(4)])
    _write(runs / "ml" / "r2ec" / "valid_log.jsonl",
           [{"step": 0, "N@10": 0.02, "elapsed_s": 0.0}, {"step": 4, "N@10": 0.025, "elapsed_s": 40.0}])
    # the readout's fit (one loss per epoch) is drawn beside the contrastive loss
    (runs / "ml" / "r2ec_no_reasoning" / "readout_fit.json").write_text('{"losses": [7.4, 7.0, 6.8]}')
    out = learning_figure(runs, ["ml"], ["r2ec_no_reasoning", "r2ec"], tmp_path / "fig" / "learning.png")
    assert [p.name for p in out] == ["learning.png", "learning.pdf"]
    assert out[0].read_bytes()[:4] == b"\x89PNG" and out[1].read_bytes()[:4] == b"%PDF"
    assert not list((tmp_path / "fig").glob(".*tmp"))  # nothing half-written left behind


def test_learning_figure_without_runs_still_renders(tmp_path):
    out = learning_figure(tmp_path / "none", ["ml"], ["r2ec"], tmp_path / "f.png")
    assert out[0].stat().st_size > 1000
