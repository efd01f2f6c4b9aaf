"""Federated clients decoupled from ranks (``fl.clients > 0``): sampling and placement of a round's
clients (sampling.py), the client algorithms FedAvg, FedProx, SCAFFOLD and FedNova (algorithms.py),
the server optimizers of Reddi et al. 2021 (server.py), the clients' states between rounds
(store.py), and the rounds themselves (rounds.py, built by build.py)."""
