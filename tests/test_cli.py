"""What the command-line tools share: sizes and lengths given as text."""

import pytest

from mlx_mqa.cli import lengths_pair, parse_size
from mlx_mqa.errors import ConfigError


@pytest.mark.parametrize(
    "text,expected",
    [("6GB", 6 * 2**30), ("6GiB", 6 * 2**30), ("1500MB", 1500 * 2**20), ("2.5g", int(2.5 * 2**30)), ("1000", 1000)],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "six GB", "-1GB", "0", "6PB", "lots"])
def test_a_bad_size_names_the_option(text):
    with pytest.raises(ConfigError, match="--memory-budget"):
        parse_size(text)


def test_lengths():
    assert lengths_pair("512x128") == (512, 128)
    with pytest.raises(ConfigError, match="--calibration-lengths"):
        lengths_pair("512")
