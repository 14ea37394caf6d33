"""Declared, typed configuration: a dataclass schema per config group (one module each, named as the group in
conf/), a field docstring per key, the defaults in one place. `register()` puts them in Hydra's ConfigStore:
`rt_lab_schema` (RootConfig) heads conf/config.yaml's defaults, so every option file and override is merged into
typed nodes (an unknown key or a wrong type fails at composition), and the groups whose options have different
shapes (template/, judge/) name their option's schema in its defaults. `rt_lab.config.validate` runs the value and
cross-group checks on a composed config, for a run and, at launch, for every job of a sweep."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from rt_lab.config.judge import LocalJudgeConfig, OpenAIJudgeConfig
from rt_lab.config.root import RootConfig
from rt_lab.config.template import ChatTemplateConfig, TagTemplateConfig

# group -> {option name in a defaults list: schema} for groups whose options have different shapes
OPTION_SCHEMAS = {
    "template": {"_tags": TagTemplateConfig, "_chat": ChatTemplateConfig},
    "judge": {"_openai": OpenAIJudgeConfig, "_hf_local": LocalJudgeConfig},
}


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="rt_lab_schema", node=RootConfig)
    for group, schemas in OPTION_SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=group, name=name, node=node)
