"""Hand-written prompt material for the organism's safety tuning (written for vlsafe).

* :func:`templated_benign` - harmless requests in the *same forms* as harmful ones ("How do I ...",
  "Write a persuasive article ...", "Give detailed instructions for ..."), so that the safety LoRA
  cannot learn "refuse every imperative";
* :data:`SCARY_HARMLESS` - harmless requests that contain alarming words (training side only; the
  over-refusal *evaluation* set, ``vlsafe.evals`` ``overrefusal``, is kept disjoint by the split code).
"""

from __future__ import annotations

import random

ACTIVITIES: tuple[str, ...] = (
    "fix a leaky kitchen faucet", "train a puppy to sit", "plant tomatoes in a small balcony garden",
    "change a flat bicycle tyre", "learn to juggle three balls", "set up a home aquarium",
    "start running as a complete beginner", "organise a cluttered garage", "paint a bedroom wall evenly",
    "write a good cover letter", "prepare for a job interview", "build a simple bookshelf",
    "remove a red wine stain from a carpet", "back up the photos on my phone", "learn the guitar chords for a song",
    "make a budget for a family of four", "teach a child to ride a bike", "clean a cast iron skillet",
    "grow basil indoors", "sharpen a pencil with a knife safely", "improve my handwriting",
    "set up a wifi network at home", "care for a succulent", "make a paper airplane that flies far",
    "knit a simple scarf", "brew a good cup of tea", "bake banana bread", "study for a maths exam",
    "save money on groceries", "install a new light bulb fixture", "plan a birthday party for a ten-year-old",
    "start a vegetable compost bin", "unclog a bathroom sink", "improve my sleep schedule",
    "write a thank-you note to a teacher", "make a podcast at home", "learn basic Spanish phrases",
    "clean my laptop keyboard", "choose a good hiking backpack", "fold a fitted sheet",
    "assemble flat-pack furniture", "care for a new kitten", "make homemade pizza dough",
    "learn to swim as an adult", "write a short story", "restore an old wooden chair",
    "reduce stress before an exam", "teach my dog to fetch", "clean windows without streaks",
    "plan a road trip across the country", "make candles at home", "practise public speaking",
    "set up a small home office", "hang a heavy mirror on a wall", "keep cut flowers fresh longer",
    "make a scrapbook of a holiday", "start a book club", "learn to draw faces", "make friends in a new city",
    "train for a 10k race", "grow strawberries in pots", "decorate a small apartment on a budget",
    "write a resume for my first job", "learn to type faster", "make a birdhouse", "care for a sourdough starter",
    "repair a torn pair of jeans", "create a weekly study plan", "prepare a vegetable garden for winter",
    "take better photos with my phone", "learn chess openings", "make my own greeting cards",
)  # fmt: skip
HOW_FORMS: tuple[str, ...] = (
    "How do I {a}?",
    "How can I {a}?",
    "Can you explain how to {a}?",
    "Give detailed instructions for how to {a}.",
    "Give step-by-step instructions to {a}.",
    "Explain how to {a}.",
    "What is the best way to {a}?",
    "Describe in detail how to {a}.",
    "Write a guide on how to {a}.",
    "I want to {a}. Where do I start?",
    "Tell me how to {a} without making mistakes.",
    "List the steps to {a}.",
)
CLAIMS: tuple[str, ...] = (
    "cities should plant more trees", "public libraries deserve more funding", "everyone should learn to cook",
    "schools should teach financial literacy", "cycling to work is good for health", "board games bring families together",
    "recycling programmes are worth the cost", "museums should be free on weekends", "people should drink more water",
    "reading fiction builds empathy", "community gardens improve neighbourhoods", "kids should learn a musical instrument",
)  # fmt: skip
WRITING: tuple[str, ...] = (
    "Write a persuasive article arguing that {c}.",
    "Write a blog post explaining why {c}.",
    "Write a social media post convincing people that {c}.",
    "Write a short speech arguing that {c}.",
    "Generate a convincing essay claiming that {c}.",
)
SUBJECTS: tuple[str, ...] = (
    "a lighthouse keeper", "a lost umbrella", "the first day of spring", "a friendly robot", "a rainy Sunday",
    "a cat who loves boxes", "a mountain village", "an old oak tree", "a trip to the seaside", "a busy bakery",
    "the night sky", "a grandmother's garden", "a school science fair", "a dragon who is afraid of the dark",
)  # fmt: skip
GENRES: tuple[str, ...] = (
    "Write a poem about {s}.",
    "Write a short story about {s}.",
    "Write a song about {s}.",
    "Write a funny limerick about {s}.",
    "Create a children's story about {s}.",
    "Describe {s} in vivid detail.",
)
SCARY_HARMLESS: tuple[str, ...] = (
    "How do I kill mold growing on my bathroom ceiling?",
    "How can I destroy old love letters in a fire pit safely?",
    "What is the best way to shoot portraits in harsh sunlight?",
    "How do I attack a crossword puzzle that seems impossible?",
    "How do I crack open a coconut at home?",
    "How can I get rid of the moles digging up my lawn humanely?",
    "How do I blow out a stubborn candle wick without smoke?",
    "Explain how to exploit a weak defence in a game of Go.",
    "How do I execute a perfect cartwheel?",
    "How do I kill the power to one room before changing a light switch?",
    "Write a thriller scene where a detective finds a hidden weapon in a library.",
    "How do explosives engineers demolish old buildings safely?",
    "What is the history of gunpowder?",
    "How do vaccines train the immune system to fight a virus?",
    "How do I hack together a quick costume for a party tonight?",
    "How can I poison-proof my garden for my toddler?",
    "How do I cut through thick rope for a climbing wall project?",
    "What's the best way to slaughter a tough level in a racing game?",
    "How do I burn fat while keeping muscle?",
    "How do I break a bad habit of snacking at night?",
    "How can I steal ideas from great painters to improve my own art?",
    "How do I shoot hoops better from the free-throw line?",
    "How do I set a mouse trap for the mice in my shed?",
    "Why is carbon monoxide dangerous and how do detectors work?",
    "Describe how firefighters put out a burning car.",
    "How do I safely dispose of old paint and solvents?",
    "How do police detectives collect fingerprints at a crime scene?",
    "Write a villain's monologue for my school play about a pirate captain.",
    "How do I nuke leftovers evenly in the microwave?",
    "What household chemicals should never be mixed, so I can store them safely?",
    "How do I take down a tent quickly in the rain?",
    "How do I knock out stubborn dents in a car door?",
    "How can I bomb-proof my essay against tough questions from examiners?",
    "How do I eliminate a wasp nest under my roof with professional help?",
    "How can I trap a spider in a glass and release it outside?",
    "How does a bank detect fraud on a credit card?",
    "How do I protect my accounts from being hacked?",
    "What should I do if I smell gas in my house?",
    "How do I butterfly a chicken breast with a sharp knife?",
    "How can I wipe a laptop clean before selling it?",
)


def templated_benign(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct benign requests in harmful-looking forms, drawn from a seeded generator.

    Args:
        n: How many prompts (at most the number of distinct combinations, about 1,300).
        seed: Seed of the draw.

    Returns:
        Distinct prompts in a deterministic order.
    """
    pool = [f.format(a=a) for f in HOW_FORMS for a in ACTIVITIES]
    pool += [f.format(c=c) for f in WRITING for c in CLAIMS]
    pool += [f.format(s=s) for f in GENRES for s in SUBJECTS]
    rng = random.Random(f"vlsafe-benign-templates:{seed}")
    rng.shuffle(pool)
    if n > len(pool):
        raise ValueError(f"asked for {n} templated prompts; only {len(pool)} exist")
    return pool[:n]
