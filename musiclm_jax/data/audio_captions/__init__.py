"""audio_captions: your own audio folder (MusicCaps CSV, JSONL or no captions) as a TFDS dataset.

`index` finds and loads items without tfds; `builder` registers the 'audio_captions' tfds builder.
"""
