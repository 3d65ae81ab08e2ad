"""The README's Python API example, run as written on a tiny corpus and a tiny spec."""

from __future__ import annotations

import re
import shutil

from conftest import REPO, write_spec


def readme_example() -> str:
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tmp_path, tiny_csv, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_csv, tmp_path / "posts.csv")
    write_spec(tmp_path / "studies" / "tfidf.toml", model="tfidf", data="posts.csv", name="api",
               storage="sqlite:///storage/api.db")
    exec(compile(readme_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\d+ [0-9.]+ [0-9.]+", out[0])  # train_one: best epoch, its loss, micro-F1
    assert re.fullmatch(r"\[.*\] \S+", out[-1])  # the tagged post: its tags, its likeliest tag
    assert (tmp_path / "results" / "api" / "model.safetensors").is_file()


def test_api_functions_are_what_the_commands_do(tmp_path, tiny_csv):
    import tagsearch as ts
    from tagsearch.data.corpus import DataConfig, load_corpus

    spec = ts.load_spec(write_spec(tmp_path / "s.toml", model="tfidf", data=tiny_csv))
    assert ts.load_corpus(spec) is load_corpus(DataConfig(path=str(tiny_csv)))  # same cached corpus
    result = ts.train_one(spec, epochs=1, early_stop=False, batch_size="32")  # checked like --param
    assert result.epochs_run == 1
