"""The command-line flags of a tiny training run (``python -m rspnet.train``)."""

# tiny runs: 4 training images of 64x64, batches of 2 -> 2 steps per epoch;
# checkpoints are named by step: checkpoint-step00000002.pt ends epoch 1
TINY = ["--size", "64x64", "--train-images", "4", "--val-images", "2", "--batch-size", "2",
        "--no-progress", "--threads", "1"]
