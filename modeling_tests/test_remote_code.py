"""A saved Ferret folder loads with `trust_remote_code=True` in a process where transformers_ferret is NOT importable."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from tiny_models import IMAGE_TOKEN_ID, REGION_TOKEN_ID, batch_inputs, make_sample, tiny_ferret_model

from transformers import AutoModelForImageTextToText, AutoProcessor

import transformers_ferret
from transformers_ferret import FerretImageProcessorPil, FerretProcessor
from transformers_ferret.conversion import convert_original_tokenizer


def test_saved_folder_loads_with_remote_code_without_the_package(tmp_path, parity_dir):
    model = tiny_ferret_model(seed=5, text_config={"model_type": "llama", "vocab_size": 502, "hidden_size": 32,
                              "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4},
                              image_token_index=501, region_token_index=500)  # fmt: skip
    processor = FerretProcessor(
        image_processor=FerretImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=convert_original_tokenizer(parity_dir / "ferret_tiny"), patch_size=14, num_region_points=16,
    )  # fmt: skip
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText"}
    for module in ("configuration_ferret", "modeling_ferret", "modeling_ferret_sampler", "modeling_ferret_anyres",
                   "modeling_ferret_checks", "processing_ferret", "region_utils", "image_processing_ferret"):  # fmt: skip
        assert (tmp_path / f"{module}.py").is_file(), module

    sample = batch_inputs([make_sample(1, seed=30)])
    ids = sample["input_ids"]
    sample["input_ids"] = ids.masked_fill(ids == IMAGE_TOKEN_ID, 501).masked_fill(ids == REGION_TOKEN_ID, 500)
    torch.save(sample, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**sample).logits
    torch.save(expected, tmp_path / "expected.pt")

    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["transformers_ferret"] = None  # importing the package now fails: only the folder's code is there
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
        folder = {str(tmp_path)!r}
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load(folder + "/inputs.pt", weights_only=True)
        with torch.no_grad():
            logits = model(**inputs).logits
        assert torch.allclose(logits, torch.load(folder + "/expected.pt", weights_only=True), atol=1e-6)
        assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "FerretModel"
        assert type(AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)).__name__ == "FerretForConditionalGeneration"
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(processor).__name__ == "FerretProcessor", type(processor)
        image = Image.fromarray(np.full((40, 60, 3), 128, dtype=np.uint8))
        batch = processor(images=image, text="<image>\\nWhat is <region>?", regions=[(10, 10, 30, 20)], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        assert out.shape[1] == batch["input_ids"].shape[1] + 2
        print("REMOTE_OK")
        """
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0 and "REMOTE_OK" in result.stdout, result.stderr[-3000:]


SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "checkpoints" / "ferret-shapes-tiny"
BLOCK_PACKAGE = 'import sys; sys.modules["transformers_ferret"] = None  # only the folder\'s own code can be used\n'


def _run_without_package(code: str, tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "HF_MODULES_CACHE": str(tmp_path / "modules")}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + textwrap.dedent(code)], capture_output=True, text=True,
        env=environment, timeout=timeout, cwd=tmp_path,
    )  # fmt: skip


def test_shipped_checkpoint_carries_the_code_files_and_auto_map_save_pretrained_writes(tmp_path):
    """The shipped folder names every Ferret Auto class in `auto_map`, as a fresh `save_pretrained` does, and its code
    files are exactly the ones that save writes, as symlinks to the package's modules (so they cannot drift)."""
    model = AutoModelForImageTextToText.from_pretrained(SHIPPED)
    AutoProcessor.from_pretrained(SHIPPED).save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    assert sorted(path.name for path in SHIPPED.glob("*.py")) == sorted(path.name for path in tmp_path.glob("*.py"))
    package = Path(transformers_ferret.__file__).resolve().parent
    for code in SHIPPED.glob("*.py"):
        assert code.is_symlink(), f"{code.name} must link to the package's module, not be a copy that can drift"
        assert code.read_bytes() == (package / code.name).read_bytes(), code.name
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        shipped, saved = (json.loads((folder / name).read_text()) for folder in (SHIPPED, tmp_path))
        assert shipped.get("auto_map") == saved["auto_map"], name


def test_shipped_checkpoint_generates_the_same_tokens_without_the_package(tmp_path):
    image = np.zeros((96, 128, 3), dtype=np.uint8)
    image[20:60, 30:80] = (220, 40, 40)
    np.save(tmp_path / "image.npy", image)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the object <region>?"}]}]
    (tmp_path / "messages.json").write_text(json.dumps(messages))
    generate = """
        import json, numpy as np, torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        folder = {folder!r}
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        prompt = processor.apply_chat_template(json.load(open("messages.json")), add_generation_prompt=True)
        inputs = processor(images=Image.fromarray(np.load("image.npy")), text=prompt, regions=[(30, 20, 79, 59)],
                           return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        print("TOKENS", output[0, inputs["input_ids"].shape[1]:].tolist(), type(model).__module__)
    """.format(folder=str(SHIPPED))
    alone = _run_without_package(generate, tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    in_package = subprocess.run([sys.executable, "-c", "import transformers_ferret\n" + textwrap.dedent(generate)],
                                capture_output=True, text=True, cwd=tmp_path, timeout=300,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert in_package.returncode == 0, in_package.stderr[-3000:]
    tokens_alone, module_alone = alone.stdout.split("TOKENS ")[1].rsplit(" ", 1)
    tokens_package, module_package = in_package.stdout.split("TOKENS ")[1].rsplit(" ", 1)
    assert module_alone.startswith("transformers_modules") and module_package.startswith("transformers_ferret")
    assert tokens_alone == tokens_package and len(json.loads(tokens_alone)) > 0


def test_trl_sft_cli_trains_the_shipped_checkpoint_without_the_package(tmp_path):
    """`trl sft` as its docs show it, on a local image dataset, in a process that cannot import transformers_ferret:
    the folder's own code and `auto_map` are all TRL gets."""
    from datasets import Dataset
    from PIL import Image

    rows = []
    for seed in range(4):
        pixels = np.random.default_rng(seed).integers(0, 255, (64, 80, 3), dtype=np.uint8)
        rows.append({
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "It is red."}]},
            ],
            "images": [Image.fromarray(pixels)],
        })  # fmt: skip
    (tmp_path / "data").mkdir()
    Dataset.from_list(rows).to_parquet(tmp_path / "data" / "train.parquet")
    arguments = ["sft", "--model_name_or_path", str(SHIPPED), "--trust_remote_code", "--dataset_name", "data",
                 "--max_steps", "2", "--per_device_train_batch_size", "2", "--output_dir", "out", "--report_to", "none",
                 "--logging_steps", "1", "--save_strategy", "no", "--use_cpu", "--bf16", "false"]  # fmt: skip
    result = _run_without_package(f"sys.argv = ['trl', *{arguments!r}]\nfrom trl.cli import main\nmain()", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training completed" in result.stdout, result.stdout[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "modeling_ferret.py").is_file()
