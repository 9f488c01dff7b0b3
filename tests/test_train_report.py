"""Trainer report room: metrics.jsonl on resume, curves, the model card and the final save."""

from __future__ import annotations

import json

import torch

from zhihu_rlhf.train import models, report, runtime


def test_metrics_resume_drops_records_after_the_checkpoint_and_plots(tmp_path):
    rt = runtime.Runtime(device=torch.device("cpu"), autocast_dtype=None)
    logger = report.MetricsLogger(tmp_path, rt)
    for step in range(1, 6):
        logger.log(step, "train", loss=1.0 / step)
    logger.log(5, "eval", loss=0.5, accuracy=0.75)
    report.MetricsLogger(tmp_path, rt, resume_step=3)
    assert [(r["step"], r["split"]) for r in report.read_metrics(tmp_path)] == [(1, "train"), (2, "train"), (3, "train")]
    path = report.plot_metrics(tmp_path)
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"


def test_model_card_names_base_model_data_and_hyper_parameters(tmp_path):
    tokenizer, model = models.load_tokenizer_and_model("tiny", "causal-lm")
    card = report.ModelCardInfo(
        task="sft", base_model="Qwen/Qwen2.5-0.5B", data="someone/zhihu-instruct",
        options={"lr": 2e-5, "epochs": 3}, results={"eval_loss": 1.2345}, usage="print('hi')",
    )
    report.save_final(tmp_path, model, tokenizer, card)
    text = (tmp_path / "README.md").read_text()
    assert "base_model: Qwen/Qwen2.5-0.5B" in text and "- someone/zhihu-instruct" in text
    assert "| `lr` | `2e-05` |" in text and "| eval_loss | 1.234 |" in text
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    assert not list(tmp_path.glob(".final-*"))
