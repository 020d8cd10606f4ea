"""Registers the standard stage tasks (import for the side effect, e.g. `--module_import=musiclm_jax.tasks.musiclm_tasks`).

    synthcaps_{semantic,coarse,fine}             synthcaps/small, paper token sizes
    synthcaps_24khz_30s_{semantic,coarse,fine}   synthcaps/small_24khz_30s, paper token sizes
    synthcaps_tiny_{semantic,coarse,fine}        synthcaps/tiny_4s_n4 (8 clips of 4 s), TINY sizes, for the tiny
                                                 random tokenizers (`random:0`) in tests and demos
    synthcaps_quickstart_{semantic,coarse,fine}  synthcaps/tiny_8s_n1000 (`make quickstart`), QUICKSTART sizes
    synthcaps_quickstart_speed_{semantic,coarse,fine}   its train split, each clip also played 2 semitones
                                                 lower and higher (key +-2, tempo x 0.89 / 1.12: the augmentation
                                                 of issue 16; evaluate on synthcaps_quickstart_*)
    synthcaps_tiny_speed_*                       the same on the tiny corpus (tests)
    synthcaps_tiny_melody_*, synthcaps_quickstart_melody_*   the same with melody conditioning of the semantic
                                                 stage (TINY_MELODY / QUICKSTART_MELODY: tokenize with a melody
                                                 embedder, 2 Hz melody frames)
    synthcaps_tiny_beat_*, synthcaps_quickstart_beat_*   the same with tempo conditioning of the semantic stage
                                                 (TINY_BEAT / QUICKSTART_BEAT: the clip's stated BPM as tempo tokens
                                                 and beat phases; the same token cache as the plain tasks)
    synthcaps_quickstart_speed_beat_*            both: the speed-augmented clips, tempo-conditioned (the speed
                                                 task's cache)
    synthcaps_tiny_key_*, synthcaps_quickstart_key_*, synthcaps_quickstart_speed_key_*   tempo-conditioned as the
                                                 beat tasks, and the semantic and coarse stages also read the clip's
                                                 key (TINY_KEY / QUICKSTART_KEY; the plain / speed tasks' cache)
    synthcaps_tiny_coarse_beat_*, synthcaps_quickstart_coarse_beat_*   the key tasks with the coarse stage told
                                                 the tempo too (TINY_COARSE_BEAT / QUICKSTART_COARSE_BEAT: tempo
                                                 tokens and each acoustic frame's beat phase; the plain task's cache)
    synthcaps_tiny_pitch_*, synthcaps_quickstart_pitch_*, synthcaps_quickstart_speed_pitch_*   the key tasks with
                                                 the pitch-class melody of the lead line in the semantic stage
                                                 (TINY_PITCH / QUICKSTART_PITCH: tokenize with the melody source
                                                 "pitch", 6.25 Hz; melody/pitch.py)
"""
from musiclm_jax.lm.stages import (QUICKSTART, QUICKSTART_BEAT, QUICKSTART_COARSE_BEAT, QUICKSTART_KEY,
                                   QUICKSTART_MELODY, QUICKSTART_PITCH, TINY, TINY_BEAT, TINY_COARSE_BEAT, TINY_KEY,
                                   TINY_MELODY, TINY_PITCH)
from musiclm_jax.melody.pitch import PitchConfig
from musiclm_jax.tasks.registry import SYNTHCAPS_KEEP, register_defaults, register_stage_tasks

TINY_TFDS = "synthcaps/tiny_4s_n4:1.0.0"
QUICKSTART_TFDS = "synthcaps/tiny_8s_n1000:1.0.0"
SPEED_SEMITONES = (-2, 2)

register_defaults()
register_stage_tasks("synthcaps_tiny", TINY_TFDS, sizes=TINY, keep=SYNTHCAPS_KEEP)
register_stage_tasks("synthcaps_quickstart", QUICKSTART_TFDS, sizes=QUICKSTART, keep=SYNTHCAPS_KEEP)
register_stage_tasks("synthcaps_quickstart_speed", QUICKSTART_TFDS, sizes=QUICKSTART, keep=SYNTHCAPS_KEEP,
                     splits=["train"], speed_semitones=SPEED_SEMITONES)
register_stage_tasks("synthcaps_tiny_speed", TINY_TFDS, sizes=TINY, keep=SYNTHCAPS_KEEP, splits=["train"],
                     speed_semitones=SPEED_SEMITONES)
register_stage_tasks("synthcaps_tiny_melody", TINY_TFDS, sizes=TINY_MELODY, keep=SYNTHCAPS_KEEP)
register_stage_tasks("synthcaps_quickstart_melody", QUICKSTART_TFDS, sizes=QUICKSTART_MELODY, keep=SYNTHCAPS_KEEP)
register_stage_tasks("synthcaps_tiny_beat", TINY_TFDS, sizes=TINY_BEAT, keep=SYNTHCAPS_KEEP)
register_stage_tasks("synthcaps_quickstart_beat", QUICKSTART_TFDS, sizes=QUICKSTART_BEAT, keep=SYNTHCAPS_KEEP)
register_stage_tasks("synthcaps_quickstart_speed_beat", QUICKSTART_TFDS, sizes=QUICKSTART_BEAT, keep=SYNTHCAPS_KEEP,
                     splits=["train"], speed_semitones=SPEED_SEMITONES)
register_stage_tasks("synthcaps_tiny_key", TINY_TFDS, sizes=TINY_KEY, keep=SYNTHCAPS_KEEP)
register_stage_tasks("synthcaps_quickstart_key", QUICKSTART_TFDS, sizes=QUICKSTART_KEY, keep=SYNTHCAPS_KEEP)
register_stage_tasks("synthcaps_quickstart_speed_key", QUICKSTART_TFDS, sizes=QUICKSTART_KEY, keep=SYNTHCAPS_KEEP,
                     splits=["train"], speed_semitones=SPEED_SEMITONES)
register_stage_tasks("synthcaps_tiny_coarse_beat", TINY_TFDS, sizes=TINY_COARSE_BEAT, keep=SYNTHCAPS_KEEP)
register_stage_tasks("synthcaps_quickstart_coarse_beat", QUICKSTART_TFDS, sizes=QUICKSTART_COARSE_BEAT,
                     keep=SYNTHCAPS_KEEP)
# The key-conditioned tasks with the pitch-class melody of each clip's lead line (issue 17): the semantic stage reads
# it in its prefix and as every frame's aligned id; the speed copies move the notes with the audio.
PITCH_RATE = PitchConfig.frame_rate
register_stage_tasks("synthcaps_tiny_pitch", TINY_TFDS, sizes=TINY_PITCH, keep=SYNTHCAPS_KEEP, melody_rate=PITCH_RATE)
register_stage_tasks("synthcaps_quickstart_pitch", QUICKSTART_TFDS, sizes=QUICKSTART_PITCH, keep=SYNTHCAPS_KEEP,
                     melody_rate=PITCH_RATE)
register_stage_tasks("synthcaps_quickstart_speed_pitch", QUICKSTART_TFDS, sizes=QUICKSTART_PITCH,
                     keep=SYNTHCAPS_KEEP, splits=["train"], speed_semitones=SPEED_SEMITONES, melody_rate=PITCH_RATE)
