"""The main job: classify sample photos through the local stack and print what came back."""
