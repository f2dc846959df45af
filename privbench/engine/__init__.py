"""The federated engine: the channel and its threat models, aggregation algorithms and
local training, the experiment's case and its round loop."""
