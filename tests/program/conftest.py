"""The three committed stacks, each run once per session (in parallel, one process each)."""

from __future__ import annotations

import pytest

from tests.program.harness import STACKS, Graph, finish_program, stack_file, start_program


@pytest.fixture(scope="session")
def stack_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graph]:
    directory = tmp_path_factory.mktemp("stacks")
    started = {
        stack: start_program(stack, stack_file(stack), directory / f"{stack}.json") for stack in STACKS
    }
    return {stack: finish_program(process, directory / f"{stack}.json") for stack, process in started.items()}


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def graph(stack: str, stack_graphs: dict[str, Graph]) -> Graph:
    return stack_graphs[stack]
