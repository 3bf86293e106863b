"""DJZ-VibeVoice inference engine: checkpoints, prompts, the batched streaming frame loop and its runtimes."""
