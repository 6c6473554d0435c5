"""Fine-tuning: pretrain on task A, freeze the first layer, adapt to task B from 50 samples.

    python examples/finetune/train.py

Both tasks label inputs through the same hidden features (8 tanh features
of a 20-dim input); task B reads them out differently, on inputs drawn
from a shifted distribution. Pretraining
learns the features; fine-tuning on 50 task-B samples keeps them (W1, b1
frozen, bit-identical) and learns a new read-out with a small learning
rate. Training from scratch on the same 50 samples is the baseline.
"""
import argparse
import os

import numpy as np

import gradc

HERE = os.path.dirname(os.path.abspath(__file__))


def make_tasks(seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(0, 0.6, (8, 20))                      # the shared features
    read_a = rng.normal(0, 1, (4, 8))
    read_b = read_a + rng.normal(0, 0.7, (4, 8))          # task B: a perturbed read-out ...
    shift_b = rng.normal(0, 0.5, 20)                      # ... of inputs from a shifted distribution

    def sample(read, shift, n):
        X = rng.normal(0, 1, (n, 20)) + shift
        return {"x": X, "label": np.argmax(np.tanh(X @ A.T) @ read.T, 1).astype(np.int32)}
    return sample(read_a, 0.0, 5000), sample(read_b, shift_b, 50), sample(read_b, shift_b, 2000)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    args = ap.parse_args(argv)
    mod = gradc.load(os.path.join(HERE, "model.py"))
    task_a, few_b, test_b = make_tasks()
    common = dict(batch_size=10, metrics=["accuracy"], val_data=test_b, seed=0)

    pre = mod.init_params(seed=0)
    gradc.fit(mod, pre, task_a, epochs=args.pretrain_epochs, batch_size=64, optimizer="adam", lr=3e-3, seed=0)
    W1 = pre["W1"].copy()
    tuned = {k: v.copy() for k, v in pre.items()}
    h_ft = gradc.fit(mod, tuned, few_b, epochs=100, optimizer="adam", lr=3e-3, frozen=["W1", "b1"], **common)
    assert np.array_equal(tuned["W1"], W1), "frozen parameters must not change"

    scratch = mod.init_params(seed=1)
    h_sc = gradc.fit(mod, scratch, few_b, epochs=100, optimizer="adam", lr=1e-2, **common)
    res = {"finetuned": h_ft["val_accuracy"][-1], "scratch": h_sc["val_accuracy"][-1]}
    print(f"task B test accuracy from 50 samples: fine-tuned {res['finetuned']:.1%}, from scratch {res['scratch']:.1%}")
    return res


if __name__ == "__main__":
    main()
