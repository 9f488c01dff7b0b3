"""The recipes: one short composition of library steps per published set.

    answers.py   source -> canonical answer table -> dedupe      (shared by both sets)
    instruct.py  answers -> best answer per question -> split -> Hub-ready folder
    pairs.py     answers -> chosen/rejected pairs -> split -> Hub-ready folder
"""
