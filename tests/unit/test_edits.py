"""What a tool call writes: patches, text replacements and shell commands, parsed."""

from __future__ import annotations

from pathlib import Path

from dibs.integrations.guard.edits import patch_writes, replaced_lines, shell_writes


def names(writes: list[tuple[str, object]], root: Path) -> list[str]:
    return [str(Path(path).relative_to(root)) for path, _ in writes]


def test_patch_names_every_file_it_adds_updates_deletes_and_moves(tmp_path: Path) -> None:
    """One patch, four files: each is a write, relative to the patch's folder."""
    patch = (
        "*** Begin Patch\n*** Add File: a.py\n+x\n*** Delete File: b.py\n"
        "*** Update File: c.py\n*** Move to: d.py\n@@\n-old\n+new\n*** End Patch\n"
    )
    assert ["a.py", "b.py", "c.py", "d.py"] == names(patch_writes(patch, str(tmp_path)), tmp_path)


def test_patch_hunks_give_the_changed_lines(tmp_path: Path) -> None:
    """A hunk's removed lines are found in the file; context lines are not counted."""
    (tmp_path / "c.py").write_text("".join(f"line {n}\n" for n in range(1, 11)))
    patch = "*** Begin Patch\n*** Update File: c.py\n@@\n line 6\n-line 7\n-line 8\n+x\n line 9\n"
    [(_path, lines)] = patch_writes(patch, str(tmp_path))
    assert [(7, 8)] == lines


def test_patch_hunk_not_found_means_the_whole_file(tmp_path: Path) -> None:
    """When the old text is not in the file, the guard cannot tell the lines: whole file."""
    (tmp_path / "c.py").write_text("a\n")
    patch = "*** Begin Patch\n*** Update File: c.py\n@@\n-zzz\n+x\n"
    assert [(str(tmp_path / "c.py"), None)] == patch_writes(patch, str(tmp_path))


def test_replace_all_covers_every_occurrence(tmp_path: Path) -> None:
    """Every occurrence with replace_all, the first one without."""
    (tmp_path / "f.py").write_text("x\ny\nx\ny\nx\n")
    assert [(1, 1)] == replaced_lines(str(tmp_path / "f.py"), [("x", False)])
    assert [(1, 1), (3, 3), (5, 5)] == replaced_lines(str(tmp_path / "f.py"), [("x", True)])
    assert [(1, 2), (3, 4)] == replaced_lines(str(tmp_path / "f.py"), [("x\ny", True)])


def test_shell_obvious_writes_are_found(tmp_path: Path) -> None:
    """Redirections, tee, sed -i, mv, cp, rm; reads and /dev/null are not writes."""
    cases = {
        "echo a > out.txt": ["out.txt"],
        "echo a >> log 2>/dev/null": ["log"],
        "cat x | tee -a t1 t2": ["t1", "t2"],
        "sed -i -e s/a/b/ s.py": ["s.py"],
        "sed -i.bak s/a/b/ s.py": ["s.py"],
        "mv a.py b.py": ["a.py", "b.py", "b.py/a.py"],
        "cp a.py b.py": ["b.py", "b.py/a.py"],
        "rm -f a.py && git status": ["a.py"],
        "cat a.py; grep x b.py": [],
        "cat > n.py <<EOF\nnot > a redirect\nEOF\n": ["n.py"],
        'echo "unbalanced': [],
        "dd if=/dev/zero of=z.bin bs=1": ["z.bin"],
        "git checkout -- g.py": ["g.py"],
        "git restore r.py": ["r.py"],
        "git checkout main": [],
    }
    for command, expected in cases.items():
        assert expected == names(shell_writes(command, str(tmp_path)), tmp_path), command


def test_shell_heredoc_patch_is_a_patch(tmp_path: Path) -> None:
    """Codex's apply_patch through the shell is read as the patch it carries."""
    command = "apply_patch <<'EOF'\n*** Begin Patch\n*** Add File: z.py\n+z\n*** End Patch\nEOF"
    assert ["z.py"] == names(shell_writes(command, str(tmp_path)), tmp_path)
