"""Write an untrained twin of a checkpoint: same network and settings, freshly initialised weights.

The "what an untrained model scores" baseline of the packaged models' figures:
    python benchmarks/untrained_checkpoint.py runs/default_brats/checkpoints/last.ckpt untrained.ckpt
    bts-infer CASES --ckpt untrained.ckpt -o pred/ && bts-eval pred/ GT
"""

from __future__ import annotations

import argparse

import torch

from bts_monai.model.checkpoint import read_inference_config
from bts_monai.model.module import INFERENCE_KEY, BratsSegModule, build_network


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    config = read_inference_config(args.ckpt)
    torch.manual_seed(args.seed)
    net = build_network(config["net"]["class_path"], config["net"]["init_args"])
    module = BratsSegModule(net, data_config={k: v for k, v in config.items() if k != "net"})
    torch.save({"state_dict": module.state_dict(), INFERENCE_KEY: module.inference_config()}, args.out)
    print(f"untrained twin of {args.ckpt} written to {args.out}")


if __name__ == "__main__":
    main()
