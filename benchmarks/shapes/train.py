"""Train a tiny Ferret on fresh synthetic shapes with TRL's SFTTrainer (stage 1 of the recipe; stage 0 is
`pretrain_vision.py`).

    python benchmarks/shapes/train.py --vision runs/vision --output-dir runs/ferret --max-steps 1500

Every step sees fresh scenes (an endless `datasets.IterableDataset`); the collator is the library's
`FerretDataCollator`; bf16 autocast on CPUs that have it. Writes the model + processor (loadable with
`from_pretrained`) and `train_log.json` (loss per logging step).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import datasets
import torch
from trl import SFTConfig, SFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import build_model, build_processor, sample_stream, train_tokenizer  # noqa: E402

from transformers_ferret import FerretDataCollator  # noqa: E402
from transformers_ferret.data_grit import GRIT_FEATURES  # noqa: E402

GRIT_COLUMNS = list(GRIT_FEATURES)


def grit_rows(seed: int, turns_per_image: int):
    for sample in sample_stream(seed, turns_per_image=turns_per_image):
        yield {column: sample.get(column) for column in GRIT_COLUMNS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", help="stage-0 vision tower folder (default: a randomly initialised tower)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--turns-per-image", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tokenizer = train_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, args.vision, seed=args.seed)
    dataset = datasets.IterableDataset.from_generator(
        grit_rows, gen_kwargs={"seed": args.seed, "turns_per_image": args.turns_per_image}, features=GRIT_FEATURES
    )
    config = SFTConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, args.max_steps // 25),
        weight_decay=0.01, adam_beta2=0.98, max_grad_norm=1.0, logging_steps=10, save_strategy="no", report_to="none",
        use_cpu=True, bf16=args.bf16, activation_checkpointing=False, max_length=None, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, dataloader_num_workers=0, seed=args.seed,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=processor,
        data_collator=FerretDataCollator(processor, seed=args.seed),
    )  # fmt: skip
    trainer.train()
    output = Path(args.output_dir)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    log = [entry for entry in trainer.state.log_history if "loss" in entry]
    summary = {"steps": args.max_steps, "batch_size": args.batch_size, "seconds": round(time.perf_counter() - started),
               "vision": args.vision, "log": log}  # fmt: skip
    (output / "train_log.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({key: value for key, value in summary.items() if key != "log"}))


if __name__ == "__main__":
    main()
