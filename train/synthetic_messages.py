"""A procedurally generated, seeded text data set: customer-support messages of eight intents
(billing, shipping, returns, login, cancel, technical_fault, product_question, feedback). The demo
text model trains on it because nothing can be downloaded here, and anyone can write a message it
should classify ("i was charged twice" is `billing`).

A message is a sentence template filled with one intent's phrases, then varied in the ways people
vary messages whatever they are about: greeting, aside, sign-off, emoji, case, punctuation, typos.
"""
import random
import re
from typing import Dict, List, Tuple

from train.common import split_off

# Templates come in two kinds. SHARED_TEMPLATES are sentence frames every intent uses, built around
# that intent's {statement} (what happened), {topic} (what it is about) and {request} (what the
# customer wants done); each intent also has templates of its own. The held-out split keeps a
# seeded quarter of both kinds out of training, so it measures messages phrased in ways the model
# has never seen. `{slot}`s are filled from the intent's phrases, then from SLOTS (alternatives may
# hold slots too); `{digitsN}` becomes N random digits.

SHARED_TEMPLATES = [
    "{statement}",
    "{statement}, {please} help",
    "{please} help, {statement}",
    "i have a problem with {topic}",
    "question about {topic}",
    "{want} {request}",
    "{please} {request}",
    "{statement}. {want} {request}",
    "{topic}?",
    "about {topic}: {statement}",
    "{statement} and {want} {request}",
    "is there a way to {request}",
    "need help with {topic}",
    "{statement}, what do i do",
    "{topic} issue",
    "{statement}. {please} {request}",
    "hello? {statement}",
    "can someone help me {request}",
    "i'm writing about {topic}",
    "{statement} - {please} {request} asap",
    "still waiting for someone to {request}",
    "{topic} - {statement}",
    "urgent: {statement}",
    "my problem is {topic}",
]

INTENTS: Dict[str, Dict[str, List[str]]] = {
    "billing": {
        "statement": [
            "i was {charged} {twice} for {order_ref}", "you {charged} {amount} {when}",
            "there is a charge of {amount} on my {card} i don't recognise", "my {card} was {charged} {amount}",
            "the invoice for {order_ref} shows the wrong amount", "i see a duplicate payment on my {card}",
            "i got an unexpected fee of {amount} on my bill", "you took {amount} from my {card} without asking",
            "my {card} statement shows two payments for one order", "the price i was {charged} doesn't match your site",
            "i was overcharged by {amount}", "my payment for the {product} went through {twice}",
            "the invoice total is wrong", "i was {charged} for a {product} i never ordered",
        ],
        "topic": [
            "a double charge", "a charge on my {card}", "my invoice", "my bill", "an unexpected fee",
            "a payment of {amount}", "the amount i was {charged}", "a duplicate payment", "my receipt",
            "the charges on my {card}", "the invoice for my {product}", "a wrong charge of {amount}",
        ],
        "request": [
            "get a refund of the extra charge", "get a copy of my invoice", "explain the {amount} charge",
            "fix the charge on my {card}", "send me a receipt for my payment", "reverse the duplicate payment",
            "correct my bill", "check why i was {charged} {twice}", "remove the fee from my bill",
            "refund the {amount} you {charged}",
        ],
        "templates": [
            "why did you {charge} me {amount} {when}", "{amount} {charged} {twice}?? that's not right",
            "unexpected fee of {amount} on my bill, what is it for", "overcharged by {amount} on {order_ref}",
            "the invoice says {amount} but i paid {amount}", "billing error on {order_ref}",
            "who authorised a {amount} charge on my {card}", "i need my money back for the double payment",
        ],
    },
    "shipping": {
        "statement": [
            "my {parcel} still hasn't arrived", "the tracking for {order_ref} hasn't updated since {when}",
            "the {parcel} says delivered but i never got it", "my {product} is stuck in transit",
            "the courier never showed up {when}", "my {parcel} was delivered to the wrong address",
            "it has been {digits1} days and my {parcel} has not arrived", "the tracking number you sent doesn't work",
            "my {parcel} is late, delivery was due {when}", "{order_ref} hasn't shipped yet",
            "the driver left my {parcel} at the wrong house", "my {product} has not been delivered",
            "tracking shows my {parcel} in transit for a week",
        ],
        "topic": [
            "my {parcel}", "the delivery of {order_ref}", "the tracking number", "a late delivery",
            "the shipping time to {place}", "my delivery address", "a missing {parcel}", "the courier",
            "delivery of my {product}", "tracking my {product}", "the shipping status",
        ],
        "request": [
            "track my {parcel}", "find out where my {parcel} is", "change the delivery address for {order_ref}",
            "get a delivery date for my {product}", "check the shipping status of {order_ref}",
            "ship my {parcel} again", "speed up the delivery", "get a new tracking number",
            "know when my {product} will arrive", "have the courier deliver it again",
        ],
        "templates": [
            "where is my {parcel}", "when will my {product} be delivered", "how long does shipping take to {place}",
            "any update on the delivery of my {product}?", "{parcel} late again, expected it {when}",
            "has {order_ref} been shipped yet", "where's my stuff, ordered {when}",
            "still no {parcel}, tracking says in transit",
        ],
    },
    "returns": {
        "statement": [
            "the {product} doesn't fit and i want to return it", "the {product} arrived broken, i want to send it back",
            "i returned the {product} {when} but got no refund yet", "the {product} is not what i ordered, i'm returning it",
            "i started a return but the return label never came", "i sent the {product} back {digits1} days ago",
            "the {product} is damaged and i want to return it", "i want to exchange the {product}",
            "the {product} is the wrong size, i need an exchange", "my return for {order_ref} was rejected",
            "i shipped my return {when} and heard nothing",
        ],
        "topic": [
            "returning my {product}", "a return label", "your return policy", "an exchange for the {product}",
            "the refund for my returned {product}", "a return for {order_ref}", "sending back the {product}",
            "the return of a damaged {product}", "exchanging a {product}", "my return",
        ],
        "request": [
            "return the {product}", "send back my {product}", "exchange the {product} for another size",
            "get a return label for {order_ref}", "swap the {product} for a different colour",
            "get a refund for the {product} i sent back", "drop off my return", "return {order_ref}",
            "exchange my {product}", "start a return",
        ],
        "templates": [
            "is it too late to return my {product}", "what is your return policy for the {product}",
            "{product} exchange please, wrong size", "return the {product} and refund me {please}",
            "i'd like to return {order_ref}, the {product} is damaged", "where do i drop off my return",
            "bought the {product} {when}, can i still return it", "how many days do i have to return the {product}",
        ],
    },
    "login": {
        "statement": [
            "i can't {log_in}", "i forgot my {password}", "the {password} reset email never arrives",
            "my account is locked after too many login attempts", "it says wrong {password} but i know it's right",
            "i'm not getting the verification code to {log_in}", "the two factor login code isn't working",
            "i keep getting logged out of my account", "my username isn't recognised when i {log_in}",
            "someone changed my {password}", "the login page says my email is not registered",
            "i've been unable to {log_in} since {when}", "my account is locked",
        ],
        "topic": [
            "my {password}", "logging in", "my locked account", "the verification code", "two factor login",
            "the {password} reset", "signing in to my account", "my username", "account login",
        ],
        "request": [
            "reset my {password}", "{log_in}", "unlock my account", "get a new verification code",
            "change my {password}", "recover my account login", "turn off two factor login",
            "get back into my account", "send me a {password} reset link",
        ],
        "templates": [
            "{log_in} not working, {password} rejected", "locked out of my account, {please} help me {log_in}",
            "why can't i {log_in}", "{password} reset link expired", "no code arrives when i try to {log_in}",
            "how do i change my {password}", "account locked?? i only tried {digits1} times",
            "forgot {password} and email, how do i {log_in}",
        ],
    },
    "cancel": {
        "statement": [
            "i no longer need the {subscription}, cancel it", "i ordered the {product} by mistake and want to cancel",
            "i want to close my account for good", "i don't want my {subscription} to renew",
            "the {subscription} is too expensive, i'm cancelling", "i signed up for the {subscription} by accident",
            "i'm leaving, end my {subscription}", "i don't use the {subscription} and want to stop it",
            "my free trial is ending and i want to cancel", "i want to cancel {order_ref}", "i need to cancel my order",
            "the cancel button for my {subscription} doesn't exist",
        ],
        "topic": [
            "cancelling my {subscription}", "my {subscription}", "auto renewal", "cancellation of {order_ref}",
            "closing my account", "ending my {subscription}", "the cancellation fee", "my free trial",
            "cancelling an order", "the renewal of my {subscription}",
        ],
        "request": [
            "cancel my {subscription}", "stop my {subscription} from renewing", "cancel {order_ref}",
            "close my account", "unsubscribe me from the {subscription}", "turn off auto renewal",
            "terminate my {subscription}", "cancel the {product} order", "delete my account and cancel everything",
            "cancel my order",
            "end my free trial",
        ],
        "templates": [
            "how do i cancel {order_ref}", "don't renew my {subscription} next month",
            "stop my {subscription} immediately", "{subscription}: cancel it, i'm done",
            "cancel cancel cancel", "can i cancel the {subscription} before the trial ends",
            "i want out of the {subscription}", "how can i cancel, there is no button",
        ],
    },
    "technical_fault": {
        "statement": [
            "the app {crashes} when i open it", "your website shows {error} at {feature}",
            "the page won't load on my {device}", "i keep getting {error}", "the {feature} button does nothing",
            "the app {crashes} on my {device} after the update", "the site is really slow and keeps timing out",
            "the app shows a blank screen", "pictures won't load in the app", "nothing happens when i click {feature}",
            "{feature} is broken on {device}", "the app {crashes} every time i tap {feature}",
            "the website is down",
        ],
        "topic": [
            "the app", "your website", "{error}", "a bug in {feature}", "the {feature} page", "the app on {device}",
            "a blank screen in the app", "the latest app update", "the {feature} button", "a website error",
        ],
        "request": [
            "fix the app", "fix {feature} on {device}", "get the app working again", "report a bug in {feature}",
            "make the site load", "get rid of {error}", "fix the crash after the update", "fix the website",
        ],
        "templates": [
            "bug: {feature} shows {error}", "{error} again on {device}, fix your site",
            "app not working since the update, it {crashes}", "search shows no results, is the site broken",
            "is the website down?", "{device}: app {crashes} on startup", "the {feature} page is just spinning forever",
            "getting {error} when i open {feature}",
        ],
    },
    "product_question": {
        "statement": [
            "i'm thinking of buying the {product} but have a question", "i can't find the size chart for the {product}",
            "the description doesn't say what the {product} is made of", "i want the {product} in {colour}",
            "i'm not sure which size of the {product} to choose", "the {product} shows as out of stock",
            "i need a {product} for {use}, which one is best", "i want to know if the {product} is waterproof",
            "i wonder if the {product} has a warranty",
        ],
        "topic": [
            "the size of the {product}", "the {product} in {colour}", "the warranty on the {product}",
            "the dimensions of the {product}", "the material of the {product}", "stock of the {product}",
            "the {product} in size {size}",
            "a {product} for {use}", "the colours of the {product}", "the battery of the {product}",
        ],
        "request": [
            "know if the {product} comes in {colour}", "find out if the {product} is waterproof",
            "know the dimensions of the {product}", "know when the {product} is back in stock",
            "compare the sizes of the {product}", "get a recommendation for a {product} for {use}",
            "check if the {product} is compatible with {device}", "know how long the battery of the {product} lasts",
            "know what the {product} is made of",
        ],
        "templates": [
            "does the {product} come in {colour}", "is the {product} waterproof", "what size {product} should i get",
            "is the {product} compatible with {device}", "which {product} would you recommend for {use}",
            "{product} in {colour}, do you have it in stock", "question about the {product}: is it good for {use}",
            "do you have the {product} in {size}", "is the {product} available in {size}",
            "what material is the {product} made of",
        ],
    },
    "feedback": {
        "statement": [
            "your service is {great}", "the {product} is {great}", "your support agent was {great}",
            "i love my new {product}", "your team is {great}, thank you", "the new website design looks {great}",
            "i'm really happy with the {product}", "i tell all my friends how {great} you are",
            "you helped me so quickly {when}, thanks", "i love shopping with you",
        ],
        "topic": [
            "your {great} service", "my {great} experience with your shop", "the {great} {product}",
            "your {great} support team", "the new website design", "a suggestion for the app",
            "how happy i am with the {product}", "a compliment for your staff",
        ],
        "request": [
            "say thank you", "pass my thanks to the team", "leave a {great} review", "share some happy feedback",
            "suggest more colours for the {product}", "suggest a dark mode for the app", "compliment your staff",
            "thank your support agent",
        ],
        "templates": [
            "keep up the {great} work", "{great} experience, will shop again", "five stars, the {product} is {great}",
            "compliments to the team, {great} job", "{great} customer service as always",
            "thanks for the quick help {when}", "just wanted to say you're {great}",
            "best shop ever, the {product} is {great}",
        ],
    },
}

SLOTS: Dict[str, List[str]] = {
    "charged": ["charged", "billed", "debited", "charged me", "billed me"],
    "charge": ["charge", "bill", "debit"],
    "twice": ["twice", "two times", "double", "3 times", "again"],
    "amount": ["${digits2}.{digits2}", "€{digits2}", "{digits2} dollars", "£{digits1}.99", "{digits3} usd", "${digits3}"],
    "card": ["card", "credit card", "debit card", "visa", "bank account", "paypal", "mastercard"],
    "order_ref": ["order #{digits5}", "order {digits5}", "#{digits6}", "order no. {digits4}-{digits2}", "my order",
                  "my last order", "the order i placed {when}", "purchase {digits5}"],
    "when": ["yesterday", "last week", "on monday", "last tuesday", "{digits1} days ago", "on {digits1}/{digits2}",
             "this morning", "on the {digits1}th", "two weeks ago"],
    "parcel": ["package", "parcel", "order", "delivery", "shipment", "box"],
    "product": ["jacket", "phone case", "headphones", "coffee maker", "sneakers", "backpack", "lamp", "blender",
                "watch", "t-shirt", "charger", "desk chair", "laptop bag", "kettle", "jeans", "speaker", "sofa cover"],
    "place": ["canada", "germany", "the uk", "australia", "texas", "my city", "france"],
    "log_in": ["log in", "sign in", "login", "access my account", "get into my account", "log into the app"],
    "password": ["password", "passcode", "pin", "pw", "password"],
    "subscription": ["subscription", "membership", "plan", "premium account", "monthly box", "newsletter subscription"],
    "device": ["iphone", "android", "my laptop", "ipad", "chrome", "firefox", "safari", "my samsung phone", "windows"],
    "crashes": ["crashes", "freezes", "keeps closing", "hangs", "shuts down", "keeps crashing", "crashed", "froze",
                "stopped working", "won't open", "is not working"],
    "error": ["error 500", "an error message", "'something went wrong'", "a 404 page", "error code {digits3}",
              "a server error"],
    "feature": ["checkout", "add to cart", "search", "wishlist", "payment", "profile", "upload"],
    "colour": ["black", "blue", "red", "navy", "white", "green", "grey", "pink"],
    "size": ["xl", "xs", "small", "medium", "large", "size {digits2}", "a smaller size", "m"],
    "use": ["running", "travel", "the office", "kids", "hiking", "gaming", "a small kitchen"],
    "great": ["great", "amazing", "awesome", "fantastic", "excellent", "superb", "brilliant", "really good", "the best"],
    "want": ["i want to", "i'd like to", "i need to", "can i", "how do i", "i would like to", "please let me",
             "is it possible to"],
    "please": ["please", "pls", "plz", "could you", "can you", "kindly", "would you please"],
}
INTENT_PHRASE_SLOTS = ("statement", "topic", "request")

OPENERS = ["hi", "hello", "hey", "hey there", "good morning", "good evening", "dear support", "hi team",
           "hello support", "excuse me", "yo", "hiya", "greetings"]
CLOSERS = ["thanks", "thank you", "thx", "ty", "please help", "asap", "cheers", "thanks in advance",
           "appreciate it", "regards", "help!", "waiting for your answer", "many thanks"]
# Said around a message of any intent; training must see them everywhere or they would tell intents apart.
ASIDES = ["what do i do", "what should i do now", "any idea why", "can someone help", "is there a way to fix this",
          "i don't know what to do", "please advise", "let me know", "hope you can help", "this is the second time i ask",
          "not happy", "i need an answer today", "sorry for my english", "quick question", "help me out here"]
EMOJI = ["🙏", "😡", "😊", "😤", "🙂", "😭", "👍", "🤔", "😩", "❤️", "🔥", "😕"]
END_PUNCTUATION = ["", "", ".", "!", "!!", "?", "??", "...", "!!!", " :("]
KEYBOARD_NEIGHBOURS = dict(zip("qwertyuiopasdfghjklzxcvbnm", "wqrtyuiopsadfghjkklxcvbnmn"))
SLOT_PATTERN = re.compile(r"\{(\w+)\}")
MAX_SLOT_DEPTH = 6


def fill_template(template: str, intent: str, rng: random.Random) -> str:
    phrases = INTENTS[intent]

    def value(match):
        name = match.group(1)
        if name.startswith("digits"):
            return "".join(rng.choice("0123456789") for _ in range(int(name[len("digits"):])))
        return rng.choice(phrases[name] if name in INTENT_PHRASE_SLOTS else SLOTS[name])

    for _ in range(MAX_SLOT_DEPTH):  # phrases hold slots, whose alternatives may hold slots
        template = SLOT_PATTERN.sub(value, template)
        if not SLOT_PATTERN.search(template):
            return template
    raise ValueError(f"slots nest more than {MAX_SLOT_DEPTH} deep in {template!r}")


def add_typos(text: str, rng: random.Random, rate: float) -> str:
    def misspell(word: str) -> str:
        if len(word) < 4 or not word.isalpha() or rng.random() >= rate:
            return word
        i = rng.randrange(1, len(word) - 1)
        kind = rng.randrange(4)
        if kind == 0:
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # swapped letters
        if kind == 1:
            return word[:i] + word[i + 1:]  # dropped letter
        if kind == 2:
            return word[:i] + word[i] + word[i:]  # doubled letter
        return word[:i] + KEYBOARD_NEIGHBOURS.get(word[i].lower(), word[i]) + word[i + 1:]  # fat finger

    return " ".join(misspell(word) for word in text.split(" "))


def vary_case(text: str, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return text
    if roll < 0.75:
        return text[:1].upper() + text[1:]
    if roll < 0.85:
        return text.upper()
    if roll < 0.92:
        return text.title()
    return " ".join(word.upper() if rng.random() < 0.3 else word for word in text.split(" "))


def support_message(template: str, intent: str, rng: random.Random) -> str:
    """One message: a template filled with the intent's phrases, then the parts people vary freely."""
    text = fill_template(template, intent, rng)
    if rng.random() < 0.45:
        text = f"{rng.choice(OPENERS)}{rng.choice([',', '', '!', ' -', '.'])} {text}"
    text += rng.choice(END_PUNCTUATION)
    if rng.random() < 0.2:
        aside = rng.choice(ASIDES)
        if rng.random() < 0.3:
            text = f"{aside}{rng.choice(['. ', ', ', '? ', ' - '])}{text}"
        else:
            text = f"{text}{rng.choice(['. ', ', ', ' '])}{aside}"
    if rng.random() < 0.35:
        text += f"{rng.choice([' ', '. ', ', ', '! '])}{rng.choice(CLOSERS)}"
    if rng.random() < 0.25:
        emoji = rng.choice(EMOJI) * rng.choice([1, 1, 2, 3])
        text = f"{emoji} {text}" if rng.random() < 0.2 else f"{text} {emoji}"
    text = vary_case(add_typos(text, rng, rate=0.05), rng)
    if rng.random() < 0.05:
        text = text.replace(" ", "  ", 1)
    return text


def split_templates(seed: int, heldout_share: float = 0.25) -> Tuple[Dict[str, List[str]], Dict[str, List[str]]]:
    """Per intent, (training templates, held-out templates): a seeded share of the shared frames and
    of the intent's own templates is kept out of training."""
    rng = random.Random(seed)
    shared_train, shared_heldout = split_off(SHARED_TEMPLATES, heldout_share, rng)
    train, heldout = {}, {}
    for intent, spec in INTENTS.items():
        own_train, own_heldout = split_off(spec["templates"], heldout_share, rng)
        train[intent], heldout[intent] = shared_train + own_train, shared_heldout + own_heldout
    return train, heldout


def generate_messages(templates: Dict[str, List[str]], per_intent: int, seed: int) -> Tuple[List[str], List[str]]:
    """(texts, labels): `per_intent` messages of each intent, written from its `templates`."""
    rng = random.Random(seed)
    texts, labels = [], []
    for intent, intent_templates in templates.items():
        for _ in range(per_intent):
            texts.append(support_message(rng.choice(intent_templates), intent, rng))
            labels.append(intent)
    return texts, labels
