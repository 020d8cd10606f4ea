"""SynthCaps: captioned music rendered offline from mma grooves and music21 tunes with FluidSynth.

Light to import: `specs` (what to render, splits), `sources` (MIDI), `render` (audio + features), `captions`,
`demo`, `clips` (a built config's clips as dicts). The tensorflow-datasets builder lives in `builder` (importing
it registers 'synthcaps').
"""
