import hashlib

import numpy as np
import pytest

from training.synthetic import EVENT_VIEW, _cumulative, generate_shop


@pytest.mark.parametrize("size", [1, 7, 5000])
def test_a_draw_by_binary_search_is_the_draw_choice_makes(size):
    # generate_shop draws each viewed item this way instead of Generator.choice(members, p=weights): the same
    # uniform number must give the same item, so the synthetic shops (and everything trained on them) stay the same.
    weights = np.random.default_rng(size).pareto(1.0, size) + 1e-9
    weights /= weights.sum()
    members = np.arange(size) * 3 + 11
    cdf = _cumulative(weights)
    by_choice, by_search = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(2000):
        expected = int(by_choice.choice(members, p=weights))
        assert int(members[cdf.searchsorted(by_search.random(), side="right")]) == expected


#: sha256 of generate_shop(n_users=300, n_items=2000, seed=4)'s events as the generator made them with
#: Generator.choice (commit b7bebb9): the shops, and what is trained and measured on them, must not change.
EVENTS_DIGEST = "62ee90264e498def48695551f4af2befb3edbe2834dd38eb6b25f253fe346b1f"
EVENT_FIELDS = ("user", "item", "kind", "timestamp", "quantity", "session")


def test_the_shop_is_the_one_the_generator_always_made_and_its_views_follow_popularity():
    first = generate_shop(n_users=300, n_items=2000, seed=4)
    digest = hashlib.sha256()
    for name in EVENT_FIELDS:
        values = getattr(first.events, name)
        digest.update(values.astype(str).tobytes() if values.dtype == object else values.tobytes())
    assert digest.hexdigest() == EVENTS_DIGEST
    views = first.events.item[first.events.kind == EVENT_VIEW]
    assert views.min() >= 0 and views.max() < 2000
    counts = np.bincount(views, minlength=2000)
    # Popularity is a power law over a shuffled catalog: a tenth of the items gets most of the views.
    assert np.sort(counts)[::-1][:200].sum() > 0.5 * counts.sum()
