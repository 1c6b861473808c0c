"""`python -m radixfair_distiller.cli`: a recipe run with a progress bar and the evaluation table.

The CLI's ``main`` runs in the test process with the arguments `python -m` would pass it and its
output captured, so the run pays no second torch import (`__main__` only calls ``sys.exit(main())``;
the TLS tests start the module as a process).
"""

from __future__ import annotations

from dataclasses import dataclass

from radixfair_distiller.cli import main


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, work_dir, capsys) -> Done:
    settings = ["--set", f"work_dir={work_dir}", "--set", "device=cpu", "--set", "torch_threads=1"]
    capsys.readouterr()  # only this run's output
    code = main([*settings, *args])
    out, err = capsys.readouterr()
    return Done(code, out, err)


def test_distill_shows_progress_and_prints_the_evaluation_table(tiny_model_dir, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
name: cli-student
teacher: {tiny_model_dir}
prune: {{depth: {{keep_layers: 1}}, calibration_sequences: 2}}
distill: {{tokens: 288, batch_size: 2, checkpoint_every: 2}}  # 3 steps of 2 x 48
data: {{seq_len: 48, text_max_files: 10, chat_prompts: 30, response_max_new_tokens: 6,
       teacher_answers: engine}}
evaluate: {{text_sequences: 2, chat_prompts: 2, max_new_tokens: 4, decode_tokens: 4}}
"""
    )
    done = run_cli("distill", str(recipe), work_dir=tmp_path / "work", capsys=capsys)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "distill [" in out and "] 3/3 loss " in out
    assert "[running] prune: measuring importance on calibration data" in out
    table = out[out.index("| model |") :].splitlines()
    assert "perplexity" in table[0] and "top-1 agreement" in table[0] and "decode tok/s" in table[0]
    assert table[2].startswith(f"| {tiny_model_dir} (teacher) |")
    assert table[3].startswith("| cli-student |")

    listing = run_cli("list", work_dir=tmp_path / "work", capsys=capsys)
    assert listing.returncode == 0 and "| cli-student |" in listing.stdout


def test_a_bad_recipe_exits_with_the_problem_named(tiny_model_dir, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: bad\nteacher: {tiny_model_dir}\nprune: {{depth: {{keep_layers: 7}}}}\n")
    done = run_cli("distill", str(recipe), work_dir=tmp_path / "work", capsys=capsys)
    assert done.returncode == 2
    assert "keep_layers: 7 layers asked, the teacher has 2" in done.stderr
