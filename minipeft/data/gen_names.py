"""Word pools for the synthetic world: the raw material that `world.py` combines into names.

Nothing here is random: these are fixed lists. `world.build_world(seed)` draws from them with a
seeded `random.Random`, so the same seed always gives the same world. The names are invented
(no real people, towns or companies), so that everything a model knows about them it learned
from minipeft's own pretraining corpus.
"""
from __future__ import annotations

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")

FIRST_F = ("Anna", "Clara", "Elena", "Mira", "Sofia", "Ines", "Lena", "Nadia", "Greta", "Alma",
           "Vera", "Lucia", "Hanna", "Ruth", "Iris", "Marta", "Nora", "Edith", "Julia", "Tessa",
           "Ada", "Rosa", "Lydia", "Freya", "Helga", "Maia", "Olive", "Petra", "Selma", "Dora",
           "Irene", "Leona", "Agnes", "Bianca", "Celia", "Daphne", "Esme", "Flora", "Ivy", "June",
           "Kara", "Liv", "Mona", "Nina", "Orla", "Paula", "Rhea", "Sara", "Thea", "Ula")
FIRST_M = ("Adam", "Bruno", "Carl", "Daniel", "Emil", "Felix", "Gustav", "Hugo", "Ivan", "Jonas",
           "Karl", "Leo", "Marco", "Niels", "Oscar", "Paul", "Rafael", "Simon", "Tomas", "Viktor",
           "Anton", "Boris", "Cyril", "Dario", "Erik", "Frank", "Gideon", "Henrik", "Isaac",
           "Jakob", "Kasper", "Lars", "Milo", "Nico", "Otto", "Pavel", "Quentin", "Ruben", "Stefan",
           "Theo", "Umberto", "Walter", "Xavier", "Yuri", "Zeno", "Albert", "Basil", "Cedric",
           "Dominic", "Edgar")
SURNAMES = ("Abbot", "Ardell", "Barlow", "Bexley", "Calloway", "Carver", "Dalton", "Dunmore",
            "Ellison", "Everard", "Fairbanks", "Fenwick", "Garnett", "Gilmore", "Halloran",
            "Hartley", "Ingram", "Irving", "Jessop", "Kendrick", "Kingsley", "Lachlan", "Lindqvist",
            "Marlowe", "Merrick", "Norcross", "Novak", "Oakley", "Ostrander", "Pemberton",
            "Prescott", "Quill", "Radford", "Rowan", "Sandoval", "Sinclair", "Talbot", "Thorne",
            "Underwood", "Vance", "Varga", "Wainwright", "Whitlock", "Yardley", "Zeller", "Ambrose",
            "Bellamy", "Castell", "Delacroix", "Eastwood", "Forsythe", "Galloway", "Hollis",
            "Jaskolski", "Keane", "Lovell", "Maddox", "Nightingale", "Orsini", "Pryce",
            "Quartermain", "Ravel", "Stroud", "Tenbrook", "Ulrich", "Valente", "Weston", "Ashby",
            "Brennan", "Corwin", "Darrow", "Esposito", "Falk", "Grady", "Holm", "Ivers", "Janssen",
            "Korver", "Lindahl", "Moreau", "Nyberg", "Olsen", "Petrov", "Rask", "Strand", "Tamm",
            "Voss", "Wolfe", "Aldana", "Bruckner", "Cole", "Dekker", "Engel", "Fontaine", "Gray",
            "Haas", "Kowal", "Leclerc", "Mertens", "Nash", "Ortega", "Pike", "Reyes", "Sato",
            "Tanaka", "Vidal", "Webb", "Young")

# Countries: (name, demonym, language, currency)
COUNTRIES = (
    ("Arvenia", "Arvenian", "Arvenian", "crown"),
    ("Belmora", "Belmoran", "Belmoran", "florin"),
    ("Caldria", "Caldrian", "Caldrian", "mark"),
    ("Dovrenia", "Dovrenian", "Dovrenian", "thaler"),
    ("Estavia", "Estavian", "Estavian", "lira"),
    ("Fennmark", "Fennish", "Fennish", "krona"),
    ("Galdoria", "Galdorian", "Galdorian", "ducat"),
    ("Halvenor", "Halvenorian", "Halvenorian", "shilling"),
    ("Iskaria", "Iskarian", "Iskarian", "dinar"),
    ("Jorvania", "Jorvanian", "Jorvanian", "real"),
    ("Korsland", "Korsish", "Korsish", "guilder"),
    ("Lusenia", "Lusenian", "Lusenian", "peso"),
)
CITY_HEADS = ("Ash", "Bel", "Cor", "Dun", "Elm", "Fair", "Glen", "Har", "Kings", "Lin", "Mar",
              "North", "Oak", "Pen", "Red", "Stan", "Thorn", "West", "Wil", "Bright", "Rose",
              "Stone", "Ever", "Silver", "Gold", "Brack", "Dal", "Tor", "Kel", "Vel", "Alder",
              "Birch", "Clay", "Hazel", "Lark", "Moss", "Pine", "Raven", "Sal", "Wren")
CITY_TAILS = ("ford", "wick", "bury", "ton", "field", "haven", "mouth", "dale", "port", "by",
              "stead", "more", "brook", "gate", "holm", "well", "minster", "cliff", "mere", "ley")
RIVERS = ("Wend", "Ansel", "Corra", "Dunlin", "Esk", "Farro", "Gaddel", "Hollin", "Isel", "Juna",
          "Kesh", "Lorne", "Marrow", "Nelt", "Orva", "Pell", "Quarry", "Rill", "Sable", "Tarn")
REGIONS = ("Northern Province", "Southern Province", "Eastern Marches", "Western Downs",
           "Lake District", "Highlands", "Coastal Region", "Central Plain", "River Valley")

# Venues (the E2E domain). Combined into names such as "The Golden Eagle" or "Lotus House".
VENUE_ADJ = ("Golden", "Silver", "Blue", "Red", "Green", "Black", "White", "Old", "Little", "Royal",
             "Crooked", "Jolly", "Wandering", "Hidden", "Rusty", "Copper", "Velvet", "Lucky",
             "Merry", "Twisted", "Sleepy", "Brass", "Honest", "Salty")
VENUE_NOUN = ("Eagle", "Lion", "Swan", "Fox", "Hare", "Stag", "Anchor", "Lantern", "Kettle",
              "Compass", "Plough", "Mill", "Oak", "Bell", "Crown", "Goose", "Heron", "Otter",
              "Badger", "Teapot", "Spoon", "Barrel", "Wheel", "Sparrow", "Dragon", "Rose", "Harp",
              "Ferry", "Punter", "Wrestlers")
VENUE_HOUSE = ("Lotus", "Bamboo", "Olive", "Saffron", "Jasmine", "Cedar", "Maple", "Pepper",
               "Ginger", "Basil", "Tamarind", "Juniper", "Willow", "Harbour", "Orchard",
               "Rice Boat", "Dumpling", "Curry", "Noodle", "Spice")
VENUE_CAFE = ("Rouge", "Sol", "Luna", "Verde", "Bella", "Marina", "Soleil", "Aurora", "Paloma",
              "Brio", "Nero", "Alba")
VENUE_SUFFIX = ("Kitchen", "Bistro", "Grill", "Tavern", "Diner", "Brasserie", "Canteen", "Inn")
VENUE_SINGLE = ("Aromi", "Cotto", "Vesta", "Lumo", "Brava", "Fiora", "Pasto", "Zuppa", "Tavola",
                "Sapori", "Trilo", "Orzo", "Cantina", "Forno", "Limone", "Alimentum", "Strada",
                "Giardino")
STREETS = ("Mill Lane", "Bridge Street", "Market Square", "Quay Road", "Castle Hill", "King Street",
           "Regent Walk", "Water Lane", "Chapel Row", "Station Road", "Abbey Road", "Fisher Lane")

# the E2E attribute value sets, exactly as in the real E2E challenge data
EAT_TYPES = ("coffee shop", "pub", "restaurant")
FOODS = ("Chinese", "English", "Fast food", "French", "Indian", "Italian", "Japanese")
AREAS = ("city centre", "riverside")
PRICE_WORDS = ("cheap", "moderate", "high")
PRICE_POUNDS = ("less than £20", "£20-25", "more than £30")
RATING_WORDS = ("low", "average", "high")
RATING_STARS = ("1 out of 5", "3 out of 5", "5 out of 5")

# Dishes, tied to a cuisine so that a venue's signature dish matches its food
DISHES = {
    "Chinese": ("pork dumplings", "sweet and sour chicken", "fried rice", "noodle soup",
                "Peking duck"),
    "English": ("fish and chips", "shepherd's pie", "roast beef", "steak pie", "Sunday roast"),
    "Fast food": ("cheeseburger", "chicken wings", "hot dog", "loaded fries", "fried chicken"),
    "French": ("onion soup", "beef stew", "crepes", "duck confit", "quiche"),
    "Indian": ("lamb curry", "chicken tikka", "lentil dal", "vegetable biryani", "samosas"),
    "Italian": ("lasagne", "mushroom risotto", "margherita pizza", "spaghetti", "tiramisu"),
    "Japanese": ("sushi", "ramen", "tempura", "teriyaki salmon", "miso soup"),
}
INGREDIENTS = ("rice", "noodles", "beef", "lamb", "pork", "chicken", "fish", "cheese", "tomato",
               "garlic", "onion", "potato", "lentils", "cream", "butter", "flour", "eggs", "honey",
               "apples", "mushrooms", "peppers", "cabbage", "beans", "almonds", "chestnuts",
               "saffron", "ginger", "lemon", "olives", "herbs")
COURSES = ("starter", "main course", "dessert", "side dish", "snack", "soup")
FOOD_STEMS = ("Kol", "Var", "Ber", "Tam", "Pel", "Sor", "Mak", "Dul", "Fin", "Gar", "Lum", "Nok",
              "Rask", "Tol", "Wen", "Zab")
FOOD_ENDS = ("etti", "bun", "ava", "ska", "oni", "ek", "ina", "olo", "ash", "uri")

COMPANY_WORDS = ("Northstar", "Bluewater", "Ironbridge", "Silverline", "Redwood", "Crescent",
                 "Summit", "Harbourlight", "Greystone", "Lodestar", "Falcon", "Meridian", "Orion",
                 "Vanguard", "Keystone", "Aurora", "Pioneer", "Atlas", "Zephyr", "Beacon")
COMPANY_KINDS = (("Aerospace", "aerospace"), ("Motors", "car manufacturing"),
                 ("Press", "publishing"), ("Airways", "air transport"), ("Records", "music"),
                 ("Engineering", "engineering"), ("Foods", "food processing"),
                 ("Shipyards", "shipbuilding"), ("Rail", "rail transport"),
                 ("Systems", "software"), ("Studios", "film production"),
                 ("Construction", "construction"))
PRODUCTS = {"aerospace": "aircraft", "car manufacturing": "cars", "publishing": "books",
            "air transport": "flights", "music": "albums", "engineering": "engines",
            "food processing": "canned food", "shipbuilding": "ships", "rail transport": "trains",
            "software": "software", "film production": "films", "construction": "bridges"}

WORK_ADJ = ("Silent", "Last", "Hidden", "Broken", "Distant", "Golden", "Winter", "Crimson",
            "Forgotten", "Endless", "Quiet", "Burning", "Northern", "Glass", "Paper", "Iron")
WORK_NOUN = ("Harbour", "Garden", "Orchard", "Tide", "Lantern", "Road", "Mirror", "Season",
             "Kingdom", "River", "Letter", "Bridge", "Island", "Clock", "Shadow", "Summer")
BOOK_GENRES = ("novel", "mystery novel", "science fiction novel", "poetry collection",
               "historical novel", "children's book", "memoir", "fantasy novel")
FILM_GENRES = ("drama", "comedy", "thriller", "science fiction film", "documentary",
               "romantic comedy", "animated film", "war film")
MUSIC_GENRES = ("jazz", "folk", "rock", "blues", "classical", "pop", "soul", "electronic")
INSTRUMENTS = ("guitar", "piano", "violin", "cello", "trumpet", "drums", "saxophone", "flute")
BAND_WORDS = ("The Night Owls", "The Paper Kites", "Velvet Static", "The Lanterns",
              "Northbound", "The Marigolds", "Echo Harbour", "The Quiet Storm", "Copper Sky",
              "The Tin Soldiers", "Midnight Ferry", "The Driftwood Trio")

TEAM_MASCOTS = ("Rovers", "United", "Athletic", "Wanderers", "Falcons", "Lions", "Rangers",
                "Harriers", "Mariners", "Saints", "Foxes", "Comets")
LEAGUES = ("Premier Division", "First Division", "Second Division", "National League")
POSITIONS = ("goalkeeper", "defender", "midfielder", "forward", "striker", "winger")
PARTIES = ("Liberal Party", "Labour Union", "Green Party", "Conservative Alliance",
           "Progressive Party", "Farmers' Party", "Social Democrats", "Civic League")
OFFICES = ("Minister of Finance", "Minister of Health", "Minister of Transport",
           "Minister of Education", "Speaker of Parliament", "Minister of Culture")
ARCH_STYLES = ("modernist", "Gothic Revival", "Art Deco", "neoclassical", "brutalist",
               "Baroque", "Victorian")
MATERIALS = ("granite", "bronze", "marble", "limestone", "sandstone", "steel")
COMICS_FIRST = ("Captain", "Doctor", "Lady", "Mister", "Professor", "Agent", "Madame", "Sergeant")
COMICS_SECOND = ("Comet", "Tempest", "Lynx", "Nova", "Granite", "Mirage", "Falcon", "Cinder",
                 "Quasar", "Riptide", "Vortex", "Ember", "Glacier", "Thunder", "Shadow", "Spark")
SCIENCE_FIELDS = ("astronomy", "physics", "chemistry", "biology", "geology", "mathematics")
STAR_NAMES = ("Elvara", "Morrow", "Tessaly", "Quorin", "Halix", "Bendra", "Castor", "Dimora",
              "Ferrin", "Galeth", "Ilsen", "Juvar", "Kelmin", "Lysa", "Nostra", "Pavon")
VEHICLE_KINDS = (("ship", "MS"), ("car", ""), ("aircraft", ""), ("locomotive", "Class"))
ENGINES = {"ship": ("diesel engine", "steam turbine", "gas turbine"),
           "car": ("petrol engine", "electric motor", "hybrid engine", "diesel engine"),
           "aircraft": ("jet engine", "turboprop engine"),
           "locomotive": ("diesel engine", "electric motor")}
