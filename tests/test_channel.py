import pytest
import torch

from privbench.engine.channel import SERVER, Channel, ClientThreat, ServerThreat, payload_bytes


def test_payload_bytes_exact_per_dtype():
    p = {
        "a": torch.zeros(3, 5),
        "b": torch.zeros(7, dtype=torch.int64),
        "c": torch.zeros(4, dtype=torch.float16),
    }
    assert payload_bytes(p) == 15 * 4 + 7 * 8 + 4 * 2


def test_channel_counts_by_kind_and_direction():
    ch = Channel(ServerThreat())
    model = {"w": torch.zeros(10)}
    for cid in range(3):
        ch.send(0, SERVER, cid, "model", model)
        ch.send(0, cid, SERVER, "update", model)
    ch.send(1, 0, SERVER, "label_counts", {"h": torch.zeros(10, dtype=torch.int64)})
    assert ch.bytes_by_kind() == {
        "label_counts": {"up": 80, "down": 0},
        "model": {"up": 0, "down": 120},
        "update": {"up": 120, "down": 0},
    }
    assert ch.bytes_up == 200 and ch.bytes_down == 120
    assert ch.bytes_per_round[0] == {"up": 120, "down": 120}


def test_server_sees_uploads_client_sees_its_broadcasts():
    server, client = Channel(ServerThreat()), Channel(ClientThreat(curious_client=2))
    for ch in (server, client):
        for cid in range(3):
            ch.send(0, SERVER, cid, "model", {"w": torch.ones(2)})
            ch.send(0, cid, SERVER, "update", {"w": torch.ones(2)})
    assert [(o.sender, o.kind) for o in server.observations] == [
        (0, "update"),
        (1, "update"),
        (2, "update"),
    ]
    assert [(o.receiver, o.kind) for o in client.observations] == [(2, "model")]


def test_observations_are_frozen_copies():
    ch = Channel(ServerThreat())
    t = torch.zeros(3)
    ch.send(0, 1, SERVER, "gradient", {"w": t})
    t += 5  # the client keeps training in place afterwards
    obs = ch.observations[0]
    assert torch.equal(obs.payload["w"], torch.zeros(3))
    with pytest.raises(TypeError):
        obs.payload["w"] = t  # read-only mapping


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="Valid kinds"):
        Channel(ServerThreat()).send(0, 0, SERVER, "secrets", {})


def test_a_run_that_attacks_nothing_records_no_observations_and_counts_the_same(
    monkeypatch,
):
    """The pipeline's runs without attacks keep no observation (every upload of every
    round would otherwise stay in memory and in the round checkpoints); the bytes and
    the model are those of a run that records, and a run with an attack still records."""
    import privbench
    from privbench.engine.experiment import Experiment
    from privbench.testing import tiny_config

    kept = {}
    train = Experiment.train

    def spy(self):
        out = train(self)
        kept[bool(self.cfg.attack.names)] = len(out.channel.observations)
        return out

    monkeypatch.setattr(Experiment, "train", spy)
    (plain,) = privbench.run(tiny_config())
    privbench.run(tiny_config(attack=dict(names=("idlg",), params={"iters": 1})))
    assert kept == {False: 0, True: kept[True]} and kept[True] > 0
    recorded = Experiment(tiny_config()).train()  # the Python API's default: it records
    assert recorded.channel.observations
    assert plain.bytes_up == recorded.channel.bytes_up
    assert plain.bytes_by_kind == recorded.channel.bytes_by_kind()
    assert plain.accuracy == recorded.history[-1]["accuracy"]
    channel = Channel(ServerThreat(), record=False)
    channel.send(0, 1, SERVER, "update", {"w": torch.ones(3)})
    assert channel.observations == [] and channel.bytes_up == 12
