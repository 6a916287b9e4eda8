"""MIS: the sort-based torch estimator against scikit-learn's mutual_info_classif (DESIGN.md section 7).

The reference size is N=10,000 images, K=64 filters, C=10 classes, post-ReLU spatial sums (many exact zeros,
the case where tie handling matters). scikit-learn runs one mutual_info_classif call per class.

    pytest benchmarks/bench_mutual_information.py            # pytest-benchmark table
    python benchmarks/bench_mutual_information.py            # prints both times and the speed-up
    python benchmarks/bench_mutual_information.py --threads 1 --n 10000 --k 64 --c 10

scikit-learn runs on one core. torch uses its intra-op threads (2 here): about 25% faster than one thread on an
idle machine, but several times slower when other jobs already keep both cores busy (the threads then wait on
each other at every op); there `--threads 1` gives the stable figure. The load average is printed with the
times for that reason.
"""
import argparse
import os
import time

import numpy as np
import pytest
import torch

from picnn_ext.metrics import mutual_information_score

N, K, C = 10_000, 64, 10


def make_data(n=N, k=K, c=C, seed=0):
    """Spatial sums of post-ReLU maps: a third of them exactly zero, some filters class-dependent."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    X = rng.standard_normal((n, k)) - 0.5
    X[:, : k // 4] += (y[:, None] == np.arange(k // 4) % c) * 1.5
    return np.maximum(X, 0.0), y


def sklearn_mis(X, y, num_classes, random_state=0):
    from sklearn.feature_selection import mutual_info_classif

    mi = np.stack(
        [
            mutual_info_classif(X, y == c, discrete_features=False, n_neighbors=3, random_state=random_state)
            for c in range(num_classes)
        ]
    )
    return float(mi.max(axis=0).mean()), mi


def torch_mis(X, y, random_state=0):
    return mutual_information_score(X, y, n_neighbors=3, random_state=random_state)


@pytest.fixture(scope="module")
def data():
    X, y = make_data()
    return X, y, torch.from_numpy(X), torch.from_numpy(y)


def test_mis_torch(benchmark, data):
    _, _, X, y = data
    mis, mi = benchmark(torch_mis, X, y)
    assert mi.shape == (C, K)


def test_mis_sklearn(benchmark, data):
    pytest.importorskip("sklearn")
    X, y, _, _ = data
    # About 10-25 s a call: one round.
    mis, mi = benchmark.pedantic(sklearn_mis, args=(X, y, C), rounds=1, iterations=1)
    assert mi.shape == (C, K)


def compare(n=N, k=K, c=C, repeats=5):
    """Times both (best of `repeats` for torch, one run of scikit-learn), checks agreement, prints the ratio."""
    X, y = make_data(n, k, c)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    torch_mis(Xt, yt)  # warm-up
    torch_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mis, mi = torch_mis(Xt, yt)
        torch_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    ref_mis, ref_mi = sklearn_mis(X, y, c)
    sklearn_time = time.perf_counter() - start
    t = min(torch_times)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())  # 1, 5, 15 min, at the end of the runs
    print(f"N={n} K={k} C={c}, torch threads={torch.get_num_threads()}, load {load} on {os.cpu_count()} cores")
    print(f"torch   : {t:.3f} s (best of {repeats}; all: {', '.join(f'{x:.3f}' for x in torch_times)})")
    print(f"sklearn : {sklearn_time:.3f} s")
    print(f"speed-up: {sklearn_time / t:.1f}x")
    print(f"MIS torch {mis:.6f}, sklearn {ref_mis:.6f}; max |MI diff| = {np.abs(mi.numpy() - ref_mi).max():.2e}")
    return sklearn_time / t


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--k", type=int, default=K)
    parser.add_argument("--c", type=int, default=C)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    compare(args.n, args.k, args.c, args.repeats)
