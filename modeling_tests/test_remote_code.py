"""A saved Ferret folder loads with `trust_remote_code=True` in a process where transformers_ferret is NOT importable."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from tiny_models import IMAGE_TOKEN_ID, REGION_TOKEN_ID, batch_inputs, make_sample, tiny_ferret_model

from transformers_ferret import FerretImageProcessorPil, FerretProcessor
from transformers_ferret.tokenization_utils_ferret import convert_original_tokenizer


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
                   "processing_ferret", "region_utils", "image_processing_ferret"):  # fmt: skip
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
