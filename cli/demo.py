"""`make demo`: the main job on the embedded registry, end to end, printing what happens.

Starts the embedded registry server and a validation worker, builds a tiny Llama-style base model
(with a character-level tokenizer) and real LoRA adapters with peft (no hub), registers the base,
pushes, validates (smoke checks and a perplexity suite), compares scores with the parent, lists,
checks compatibility, pulls an adapter back and loads it with peft, and exports a merged
checkpoint that transformers loads.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(os.environ.get("DEMO_DIR", ".demo")).resolve()
EXE = str(Path(sys.executable).with_name("adapter-registry"))


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def cli(*args: str, env: dict[str, str]) -> str:
    print(f"$ adapter-registry {shlex.join(args)}", flush=True)
    proc = subprocess.run([EXE, *args], env=env, capture_output=True, text=True)
    out = proc.stdout.strip()
    if out:
        print(out)
    if proc.returncode != 0:
        print(proc.stderr.strip(), file=sys.stderr)
        raise SystemExit(f"demo step failed: adapter-registry {shlex.join(args)}")
    return out


def save_tokenizer(base_dir: Path) -> None:
    """A character-level tokenizer: the base needs one for perplexity suites (no hub)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = ["<unk>", "<s>", "</s>", "<pad>", *(chr(c) for c in range(32, 127)), "\n"]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>", pad_token="<pad>").save_pretrained(base_dir)


SUPPORT_TEXTS = [
    "Thanks for reaching out! I have reset your password; please check your inbox.",
    "Your order has shipped and should arrive within three business days.",
    "I am sorry for the trouble. Could you send me the error message you see?",
    "You can cancel your subscription at any time from the billing page.",
]


def build_models(base_dir: Path, adapter_dirs: list[Path]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(base_dir)
    save_tokenizer(base_dir)
    for seed, out in enumerate(adapter_dirs, start=1):
        torch.manual_seed(0)
        model = get_peft_model(
            LlamaForCausalLM(config),
            LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                       task_type="CAUSAL_LM"),
        )
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:  # trained-looking weights (lora_B starts at zero)
                    param.normal_(0, 0.05)
        model.save_pretrained(str(out))
        cfg = out / "adapter_config.json"
        cfg.write_text(cfg.read_text().replace('"base_model_name_or_path": null',
                                               '"base_model_name_or_path": "tiny-llama"'))


def wait_for_jobs(url: str, timeout: float = 600) -> None:
    """Until every queued validation has finished (the worker runs them one after another)."""
    deadline = time.monotonic() + timeout
    while any(j["status"] in ("queued", "running")
              for j in httpx.get(f"{url}/api/v1/jobs", timeout=30).json()):
        if time.monotonic() > deadline:
            raise SystemExit("the validation jobs did not finish")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    if ROOT.exists():
        shutil.rmtree(ROOT)
    ROOT.mkdir(parents=True)
    home = ROOT / "home"
    env = {**os.environ, "REGISTRY_HOME": str(home)}
    for var in ("REGISTRY_URL", "REGISTRY_DATABASE_URL", "REGISTRY_BLOB_URL"):
        env.pop(var, None)

    say("1. Build a tiny Llama-style base model (with a tokenizer) and two LoRA adapters with "
        "peft (no hub)")
    base_dir, v1_dir, v2_dir = ROOT / "tiny-llama", ROOT / "adapter-v1", ROOT / "adapter-v2"
    build_models(base_dir, [v1_dir, v2_dir])
    for d in (base_dir, v1_dir):
        files = ", ".join(f"{p.name} ({p.stat().st_size} B)" for p in sorted(d.iterdir()))
        print(f"{d.name}: {files}")

    say(f"2. Start the embedded registry (SQLite + blobs under {home})")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([EXE, "server", "--port", str(port), "--log-level", "warning"],
                              env=env)
    worker: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the registry server did not start")
            time.sleep(0.2)
        print(f"server ready at {url}  (OpenAPI: {url}/docs)")
        # A validation worker beside it: it reaches the registry through the URL alone.
        worker = subprocess.Popen([EXE, "--url", url, "worker", "--device", "cpu"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"$ adapter-registry --url {url} worker --device cpu   (in the background)")

        say("3. Register the base model: files go to the blob store, the manifest is read "
            "from safetensors headers")
        cli("--url", url, "base", "register", "tiny-llama", str(base_dir), env=env)
        cli("--url", url, "base", "show", "tiny-llama", env=env)

        say("4. Push: static checks run locally, blobs upload by digest, then the version")
        cli("--url", url, "push", "support-bot", str(v1_dir), "--base", "tiny-llama",
            "--meta", "dataset=tickets-v3", env=env)
        cli("--url", url, "push", "support-bot", str(v2_dir), "--base", "tiny-llama",
            "--parent", "support-bot:1", "--meta", "dataset=tickets-v4", env=env)
        print("pushing v1's content again uploads nothing (content-addressed):")
        cli("--url", url, "push", "support-bot", str(v1_dir), "--base", "tiny-llama",
            "--idempotency-key", "ci-run-1", env=env)
        cli("--url", url, "push", "support-bot", str(v1_dir), "--base", "tiny-llama",
            "--idempotency-key", "ci-run-1", env=env)

        say("5. Validate: the worker loads each version onto the base, runs the smoke checks and "
            "an attached perplexity suite, and records scores")
        suite_file = ROOT / "support-ppl.jsonl"
        suite_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in SUPPORT_TEXTS))
        cli("--url", url, "suite", "add", "support-ppl", str(suite_file), "--kind", "perplexity",
            env=env)
        cli("--url", url, "suite", "attach", "support-ppl", "support-bot", env=env)
        cli("--url", url, "validate", "support-bot:2", "--wait", "--timeout", "600", env=env)
        print("each push queued a validation too (REGISTRY_AUTO_VALIDATE):")
        cli("--url", url, "jobs", "list", env=env)
        print("support-bot:2 against its parent (support-bot:1) and the base model's own scores:")
        wait_for_jobs(url)
        cli("--url", url, "evals", "support-bot:2", env=env)

        say("6. List and show")
        cli("--url", url, "list", env=env)
        cli("--url", url, "list", "support-bot", env=env)
        cli("--url", url, "show", "support-bot:2", env=env)

        say("7. Static compatibility (tensor shapes only, no weights read)")
        cli("--url", url, "compat", "support-bot:1", "--base", "tiny-llama", env=env)
        cli("--url", url, "compat", "--base", "tiny-llama", env=env)

        say("8. Promote through the gates, serve NAME@production, roll back in one command")
        serving = ROOT / "serving"
        cli("--url", url, "promote", "support-bot:1", "--alias", "production", "--reason",
            "first release", env=env)
        cli("--url", url, "pull", "support-bot@production", str(serving), "--if-changed",
            env=env)
        cli("--url", url, "promote", "support-bot:2", "--alias", "production", "--reason",
            "lower perplexity on support-ppl", env=env)
        cli("--url", url, "pull", "support-bot@production", str(serving), "--if-changed",
            env=env)  # the alias moved: the directory is swapped for v2, atomically
        cli("--url", url, "rollback", "support-bot", "--alias", "production", env=env)
        cli("--url", url, "history", "support-bot", env=env)

        say("9. Pull support-bot:1 back (every file verified against its digest)")
        pulled = ROOT / "pulled"
        cli("--url", url, "pull", "support-bot:1", str(pulled), env=env)

        say("10. Export a merged checkpoint (streamed shard by shard) and record it")
        merged = ROOT / "merged"
        cli("--url", url, "export", "support-bot:1", "--base", "tiny-llama", "--out",
            str(merged), "--upload", "--max-shard-size", "200KB", env=env)
        print("the export is listed in the lineage (v2 was pushed with --parent support-bot:1):")
        cli("--url", url, "lineage", "support-bot:1", env=env)

        say("11. A bad push is refused with one line, and nothing is stored")
        bad = ROOT / "bad-adapter"
        shutil.copytree(v1_dir, bad)
        (bad / "adapter_model.safetensors").rename(bad / "adapter_model.bin")
        proc = subprocess.run([EXE, "--url", url, "push", "support-bot", str(bad)], env=env,
                              capture_output=True, text=True)
        print(f"$ adapter-registry push support-bot {bad}\n{proc.stderr.strip()}"
              f"\n(exit code {proc.returncode})")
    finally:
        if worker is not None:
            worker.terminate()  # SIGTERM: it finishes or releases its job, then exits
            worker.wait(timeout=120)
        server.terminate()
        server.wait(timeout=30)

    say("12. The same registry without a server (embedded mode: no --url)")
    cli("list", "support-bot", env=env)

    say("13. Load the pulled adapter with peft, and the merged export with transformers")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    inputs = torch.tensor([[1, 17, 42, 99, 7]])
    with torch.no_grad():
        original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                             str(v1_dir))
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                           str(pulled))
        plain = AutoModelForCausalLM.from_pretrained(base_dir)
        folded = AutoModelForCausalLM.from_pretrained(merged)
        a, b, c, d = (m(inputs).logits for m in (original, loaded, plain, folded))
    print(f"pulled adapter logits == original adapter logits: {torch.equal(a, b)}")
    print(f"adapter changes the base model's logits by up to {float((a - c).abs().max()):.4f}")
    print(f"merged export vs base + adapter: max abs logit difference "
          f"{float((a - d).abs().max()):.2e}")
    if not torch.equal(a, b):
        raise SystemExit("pulled adapter differs from the original")
    if not torch.allclose(a, d, atol=1e-4):
        raise SystemExit("the merged export differs from base + adapter")
    print(f"\ndemo finished; registry state is in {home}")


if __name__ == "__main__":
    main()
