"""The editing modality's registry entry (``diffalign.registry``; entry point ``editing`` of group
diffalign.modalities).

Rewards: ``edit_tint`` (modalities/editing/rewards.py, for tiny runs) beside the generic ones, which resolve by name
(an image reward then scores the edited images). Data: the ``editing_jsonl`` preference layout
(modalities/editing/preferences.py)."""
from __future__ import annotations

from diffalign.modalities.editing.options import EditingOptions
from diffalign.registry import ModalityEntry


def build(options: EditingOptions, prompts, device):
    from diffalign.modalities.editing.adapter import EditingAdapter
    return EditingAdapter.from_options(options, device=device)


def rewards():
    from diffalign.modalities.editing.rewards import EDITING_REWARDS
    return dict(EDITING_REWARDS)


def readers():
    from diffalign.modalities.editing.preferences import FORMAT, load_editing_preferences
    return {FORMAT: load_editing_preferences}


MODALITY = ModalityEntry(options=EditingOptions, build=build, rewards=rewards, readers=readers)
