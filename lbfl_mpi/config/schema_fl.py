"""The ``fl`` section of the configuration schema: federated clients, sampling, placement, the
algorithm (FedAvg, FedProx, SCAFFOLD, FedNova, FedBN) and the server optimizer (Reddi et al. 2021)."""
from __future__ import annotations

from dataclasses import dataclass

from .fields import config_field as _f


@dataclass
class FLConfig:
    clients: int = _f(0, "Federated clients N, independent of the rank count (0: one client per rank). N >= "
                         "ranks; data.partition is made over the N clients. sync.mode='fedavg': each rank "
                         "hosts the clients placed on it each round, and a round runs sync.period local steps "
                         "of every sampled client from the global model, then one weighted exchange; "
                         "sync.mode='bsp': each rank hosts a fixed share of the clients and every step's "
                         "gradient is that of all N clients' batches, the rank's concatenated, then one "
                         "exchange (docs/methods.md#federated-clients).",
                      min=0, max=1_000_000)
    clients_per_round: int = _f(0, "K: clients sampled each round (0: all N). At least the rank count, so that "
                                   "no rank idles.", min=0, max=1_000_000)
    sampling: str = _f("uniform", "How the K clients of a round are drawn, without replacement, from a "
                                  "generator seeded by run.seed and the round: uniform, or weighted by each "
                                  "client's sample count.", ("uniform", "weighted"))
    placement: str = _f("balanced", "How a round's sampled clients are placed on ranks, largest first onto the "
                                    "rank that finishes it soonest: balanced = by sample count; throughput = "
                                    "by sample count x each rank's seconds per sample measured in the earlier "
                                    "rounds (like dynamic batching: a slow rank gets fewer clients; balanced "
                                    "until every rank has been measured). The model is the same up to the "
                                    "summation order, but throughput placement depends on timings, so it is "
                                    "not bit for bit reproducible.", ("balanced", "throughput"))
    local_epochs: float = _f(0.0, "E > 0: client i takes tau_i = ceil(E n_i / train.batch_size) local steps a "
                                  "round (n_i its samples; the loader's position carries over between rounds, "
                                  "so these are E epochs' worth of samples), in place of sync.period steps. "
                                  "sync.period stays the round's span on the step axis (train.steps, "
                                  "eval_every, checkpoints and lr schedules count on it) and must be at least "
                                  "the largest tau_i: the run says which when it is not. Unequal tau_i is "
                                  "what fl.algorithm='fednova' normalises. 0: sync.period steps each.",
                             min=0, max=1_000_000)
    algorithm: str = _f("fedavg", "fedavg (McMahan et al. 2017); fedprox: proximal term mu/2 |w - w_g|^2 "
                                  "(Li et al. 2020); scaffold: option II control variates (Karimireddy et al. "
                                  "2020); fednova: normalised averaging of local steps (Wang et al. 2020).",
                        ("fedavg", "fedprox", "scaffold", "fednova"))
    prox_mu: float = _f(0.01, "fedprox: mu, the weight of the proximal term.", min=0)
    bn: str = _f("average", "BatchNorm layers' affine parameters and running statistics: average = like every "
                            "other entry of the model; local = FedBN (Li et al. 2021): each client keeps its "
                            "own and trains from them every round. The global model's BatchNorm entries are "
                            "still the weighted mean of the round's clients: they are what the global model is "
                            "evaluated and saved with, and where a client's first round starts. Needs a model "
                            "with BatchNorm (bncnn, or model.norm='batch').", ("average", "local"))
    client_state: str = _f("keep", "The client optimizer's state (momentum, Adam moments) between the rounds a "
                                   "client takes part in: keep = the client's own, swapped in and out with it; "
                                   "reset = fresh every round (fednova and scaffold always reset, so that their "
                                   "step counting holds with momentum).",
                           ("keep", "reset"))
    server_optimizer: str = _f("sgd", "Server update from the pseudo-gradient -Delta, Delta the weighted mean "
                                      "client delta (Reddi et al. 2021): sgd (w += server_lr Delta; FedAvg at "
                                      "server_lr 1), momentum (FedAvgM), adam, yogi, adagrad. BatchNorm "
                                      "statistics always take the plain weighted mean.",
                               ("sgd", "momentum", "adam", "yogi", "adagrad"))
    server_lr: float = _f(1.0, "Server learning rate eta_s.", min=0, min_open=True)
    server_momentum: float = _f(0.9, "momentum: beta of the server momentum.", min=0, max=1, max_open=True)
    server_betas: list = _f([0.9, 0.99], "adam, yogi: [beta1, beta2]; adagrad uses beta1.", item="float", min=0,
                            max=1, max_open=True)
    server_tau: float = _f(1e-3, "adam, yogi, adagrad: tau, the adaptivity (added to sqrt(v); v starts at "
                                 "tau^2).", min=0, min_open=True)
    state_budget_mb: float = _f(1024.0, "Memory for the states of the clients a rank holds between rounds; "
                                        "beyond it the least recently used spill to clients/ in the run "
                                        "directory (one torch file each, read back with weights_only).",
                                min=0, max=1_048_576)
