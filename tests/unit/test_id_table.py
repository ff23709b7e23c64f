import pickle

import numpy as np
import pytest

from services.core.id_table import MISSING, HashCollision, IdTable


class _SameHash(str):
    """A str whose hash is always 7: two of them collide in any IdTable."""

    def __hash__(self) -> int:
        return 7


class _Hashed(str):
    """A str with a chosen hash."""

    def __new__(cls, text: str, value: int):
        made = super().__new__(cls, text)
        made.value = value
        return made

    def __hash__(self) -> int:
        return self.value


def _expected(ids: list[str], wanted: list[str]) -> list[int]:
    where = {item: i for i, item in enumerate(ids)}
    return [where.get(item, MISSING) for item in wanted]


@pytest.mark.parametrize("count", [0, 1, 17, 5000])
def test_positions_are_those_of_a_dict_for_known_and_unknown_ids(count):
    rng = np.random.default_rng(count)
    ids = [f"SKU{i:07d}" for i in rng.permutation(count * 3)[:count]]
    table = IdTable(ids)
    unknown = [f"other-{i}" for i in range(50)] + ["", "SKU"]
    wanted = [ids[j] for j in rng.integers(0, count, size=400)] if count else []
    wanted = list(rng.permutation(np.array(wanted + unknown, dtype=object)))
    # Fresh string objects, as a parsed request has: nothing may depend on the very objects given at construction.
    wanted = [item.encode().decode() for item in wanted]
    assert table.positions(wanted).tolist() == _expected(ids, wanted)
    assert table.positions([]).tolist() == []
    assert len(table) == count


def test_every_id_of_many_small_crowded_tables_is_found_where_it_is():
    # Small tables are half full, so ids share home slots and probe past the end of the table back to its start.
    rng = np.random.default_rng(0)
    for size in range(1, 40):
        ids = [str(x) for x in rng.integers(0, 10**12, size=size)]
        ids = list(dict.fromkeys(ids))
        table = IdTable(ids)
        assert table.positions(ids).tolist() == list(range(len(ids)))
        assert table.positions([ids[-1], "not-there"]).tolist() == [len(ids) - 1, MISSING]


def test_ids_whose_home_is_the_last_slot_wrap_round_to_the_start():
    # Four ids make a 16-slot table; all four hashes land on slot 15, so three of them sit in slots 0-2.
    ids = [_Hashed(f"id{h}", h) for h in (15, 31, 47, -1)]
    table = IdTable(ids)
    assert table.positions([_Hashed(f"id{h}", h) for h in (-1, 47, 31, 15)]).tolist() == [3, 2, 1, 0]
    # A missing id on the same path probes through all four and stops at the first empty slot.
    assert table.positions([_Hashed("other", 63)]).tolist() == [MISSING]


def test_a_table_is_not_carried_to_another_process_whose_hashes_differ():
    with pytest.raises(TypeError, match="build it again"):
        pickle.dumps(IdTable(["a", "b"]))


def test_duplicate_ids_are_refused_and_a_shared_hash_is_named():
    with pytest.raises(ValueError, match="distinct"):
        IdTable(["a", "b", "a"])
    with pytest.raises(HashCollision, match="same 64-bit hash"):
        IdTable([_SameHash("a"), _SameHash("b")])
