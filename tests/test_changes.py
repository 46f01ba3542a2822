"""The CDC collapse to final state, the changelog, and the exactly-once checkpoint rules."""

from beam_pixels.changes import ChangeBatch, Op, changelog_rows, collapse_to_final_state, concat_records
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.schema import SourceSchema

SCHEMA = SourceSchema.parse("region:STRING, id:INT, v:STRING", ["region", "id"])


def row(region, id_, v):
    return {"region": region, "id": id_, "v": v}


def test_last_operation_per_key_wins_and_every_touched_key_is_reported():
    batch = ChangeBatch.from_changes(
        SCHEMA,
        [
            (Op.INSERT, None, row("eu", 1, "a")),
            (Op.UPDATE, row("eu", 1, "a"), row("eu", 1, "b")),
            (Op.INSERT, None, row("us", 1, "x")),  # same id, other region: another key
            (Op.DELETE, row("us", 1, "x"), None),
            (Op.SNAPSHOT, None, row("eu", 2, "s")),
            (Op.DELETE, row("eu", 2, "s"), None),
            (Op.INSERT, None, row("eu", 2, "again")),  # re-inserted after its delete
            (Op.UPDATE, row("eu", 3, "old"), row("eu", 4, "moved")),  # an update that moves the key
        ],
    )
    state = collapse_to_final_state(concat_records([batch], SCHEMA), SCHEMA)

    assert sorted(state.upserts.to_pylist(), key=lambda r: r["id"]) == [
        row("eu", 1, "b"),
        row("eu", 2, "again"),
        row("eu", 4, "moved"),
    ]
    touched = sorted(zip(*state.touched_keys.to_pydict().values()))
    assert touched == [("eu", 1), ("eu", 2), ("eu", 3), ("eu", 4), ("us", 1)]
    assert tuple(state.counts) == (4, 2, 2)


def test_order_across_batches_is_by_poll_group_then_position():
    schema = SourceSchema.parse("id:INT, v:STRING", ["id"])
    later = ChangeBatch.from_changes(schema, [(Op.UPDATE, {"id": 1, "v": "a"}, {"id": 1, "v": "b"})], start_position=1)
    earlier = ChangeBatch.from_changes(schema, [(Op.INSERT, None, {"id": 1, "v": "a"})], start_position=0)
    state = collapse_to_final_state(concat_records([later, earlier], schema), schema)
    assert state.upserts.to_pylist() == [{"id": 1, "v": "b"}]


def test_changelog_keeps_every_change_with_its_operation():
    batch = ChangeBatch.from_changes(
        SCHEMA, [(Op.INSERT, None, row("eu", 1, "a")), (Op.DELETE, row("eu", 1, "a"), None)], poll_group=3
    )
    rows = changelog_rows(concat_records([batch], SCHEMA), SCHEMA).to_pylist()
    assert [(r["_op"], r["v"], r["_poll_group"], r["_position"]) for r in rows] == [
        ("INSERT", "a", 3, 0),
        ("DELETE", "a", 3, 1),
    ]


def test_checkpoint_skips_what_is_committed_and_advances_past_the_rest():
    schema = SourceSchema.parse("id:INT", ["id"])
    group0 = ChangeBatch.from_changes(schema, [(Op.INSERT, None, {"id": i}) for i in range(5)], poll_group=0)
    group1 = ChangeBatch.from_changes(
        schema, [(Op.INSERT, None, {"id": i}) for i in range(3)], poll_group=1, start_position=10
    )
    records = concat_records([group0, group1], schema)

    committed = Checkpoint(batch_id=4, positions={0: 3})
    todo = committed.uncommitted(records)
    assert list(zip(todo.column("poll_group").to_pylist(), todo.column("position").to_pylist())) == [
        (0, 3), (0, 4), (1, 10), (1, 11), (1, 12)
    ]
    after = committed.advance(todo)
    assert after == Checkpoint(batch_id=5, positions={0: 5, 1: 13})
    assert after.uncommitted(records).num_rows == 0
    assert Checkpoint.from_properties(after.to_properties()) == after
    assert Checkpoint.from_properties({"other": "x"}) is None
