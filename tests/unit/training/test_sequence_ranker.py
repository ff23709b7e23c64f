"""The ranker's in-graph evidence: item-to-item co-occurrence over the newest history slots, and the window split
between the repeat features (the whole window) and the attention (the newest slots)."""

from __future__ import annotations

import numpy as np
import torch

from training.models.sequence_ranker import CooccurrenceScore, SequenceRanker


def test_cooccurrence_score_sums_decayed_similarities_of_the_newest_items():
    rng = np.random.default_rng(0)
    similarity = rng.random((30, 30)).astype(np.float32)
    np.fill_diagonal(similarity, 0.0)
    scorer = CooccurrenceScore(similarity, recent=5, decay=0.5)
    history = np.zeros((2, 12), dtype=np.int64)
    history[0, -7:] = [3, 4, 5, 6, 7, 8, 9]  # only the newest 5 (9, 8, 7, 6, 5) count
    history[1, -2:] = [1, 2]
    candidates = np.array([[1, 2, 0], [3, 30, 0]])
    got = scorer(torch.from_numpy(history), torch.from_numpy(candidates)).numpy()
    table = similarity.astype(np.float16).astype(np.float32)

    def expected(newest_first, candidate):
        return sum(0.5**age * table[t - 1, candidate - 1] for age, t in enumerate(newest_first)) if candidate else 0.0

    want = [[expected([9, 8, 7, 6, 5], c) for c in candidates[0]], [expected([2, 1], c) for c in candidates[1]]]
    assert np.allclose(got, want, atol=1e-6)
    assert (got[:, 2] == 0).all()  # unknown candidate (token 0)


def test_attention_reads_only_the_newest_slots_of_the_window():
    torch.manual_seed(0)
    model = SequenceRanker(20, num_features=9, dim=8, history_length=12, layers=1, attention_length=4).eval()
    history = torch.randint(1, 21, (3, 12))
    changed = history.clone()
    changed[:, :8] = torch.randint(1, 21, (3, 8))  # older than the attention window
    with torch.no_grad():
        assert torch.equal(model.user_state(history), model.user_state(changed))
        changed[:, -1] = (changed[:, -1] % 20) + 1
        assert not torch.equal(model.user_state(history), model.user_state(changed))


def test_listwise_loss_by_hand():
    from training.fit import listwise_loss

    logits = torch.tensor([[2.0, 0.0, 0.0, 5.0], [1.0, 1.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # the second example has no purchase
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # slot 3 is padding: not a competitor
    denominator = np.log(np.exp(2.0) + 2.0)
    want = ((denominator - 2.0) + (denominator - 0.0)) / 2
    assert abs(float(listwise_loss(logits, target, mask)) - want) < 1e-5


def test_the_bought_before_term_moves_only_candidates_the_customer_bought():
    from services.ranking.features import CANDIDATE_FEATURES

    column = CANDIDATE_FEATURES.index("log_history_count")
    torch.manual_seed(0)
    model = SequenceRanker(20, len(CANDIDATE_FEATURES), dim=8, history_length=6, layers=1, bought_before_column=column)
    model.eval()
    history = torch.randint(1, 21, (2, 6))
    candidates = torch.randint(1, 21, (2, 4))
    features = torch.rand(2, 4, len(CANDIDATE_FEATURES))
    features[..., column] = torch.tensor([[0.0, 0.7, 0.0, 1.1], [0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        model.logit_scale.fill_(0.8)
        model.logit_bias.fill_(-1.0)
        plain, _ = model(history, candidates, features)
        model.bought_before_bias.fill_(0.9)
        shifted, _ = model(history, candidates, features)
        logits, _ = model.logits(history, candidates, features)
    bought = features[..., column] > 0
    assert torch.equal(plain[~bought], shifted[~bought])
    assert torch.allclose(shifted[bought], torch.sigmoid(0.8 * logits[bought] - 1.0 + 0.9))
    assert (shifted[bought] > plain[bought]).all()
