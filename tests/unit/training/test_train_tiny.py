import numpy as np
import torch

from training import train_tiny
from training.tiny_ranker import TinySequenceRanker


def _model(num_items: int = 60) -> TinySequenceRanker:
    torch.manual_seed(0)
    model = TinySequenceRanker(num_items, dim=8, history_length=5)
    with torch.no_grad():
        model.candidate_bias.weight[1:].normal_()
    return model.eval()


def test_logits_for_every_item_are_the_logits_with_every_item_as_candidate():
    model = _model()
    history = torch.tensor([[0, 0, 3, 7, 9], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    everything = torch.arange(1, model.num_items + 1)[None].expand(len(history), -1)
    with torch.no_grad():
        expected = model.logits(history, everything)
        assert torch.allclose(model.logits_for_every_item(history), expected, atol=1e-5)


def test_evaluation_in_chunks_of_users_gives_the_figures_of_one_pass(monkeypatch):
    model = _model()
    rng = np.random.default_rng(1)
    test = [(rng.integers(0, 60, size=rng.integers(1, 8)), int(rng.integers(0, 60))) for _ in range(40)]
    popularity = rng.random(60).astype(np.float32)
    whole = train_tiny.evaluate(model, test, popularity, history_length=5, k=5)
    monkeypatch.setattr(train_tiny, "EVAL_CHUNK_SCORES", 60 * 3)  # three users per chunk
    assert train_tiny.evaluate(model, test, popularity, history_length=5, k=5) == whole
    assert whole["test_users"] == 40
    # The model's hit rate is computed, not copied: a model that ranks the targets first hits every time.
    with torch.no_grad():
        model.candidate_bias.weight[1:] = -100.0
        for _, target in test:
            model.candidate_bias.weight[target + 1] = 100.0
    hits = train_tiny.evaluate(model, test, popularity, history_length=5, k=len({t for _, t in test}))
    assert hits["hr@" + str(len({t for _, t in test}))] == 1.0
