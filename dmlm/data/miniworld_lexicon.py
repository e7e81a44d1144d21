"""The mini-world lexicon: every word the grammar can use, with its es/de/fr forms.

Pure data plus the small constructors that parse it; all agreement and word order live in
`dmlm.data.miniworld`. Conventions of the entries:
- **Keys are the English lemma** (`"ball"`, `"red"`, `"next_to"`); scenes refer to words only
  by key. Entries keep normal casing (German nouns capitalised); `render` lowercases.
- **Nouns** are one string per language, space-separated: `"sg pl"` for English, `"sg pl g"`
  for Spanish/French (g in m/f), `"sg pl g [oblique]"` for German (g in m/f/n; the fourth,
  optional form is the accusative/dative singular of weak nouns, "Elefanten"). `cls` is a
  semantic class that verbs select on; people are class "person".
- **Adjectives** give Spanish and French forms as `"m.sg f.sg m.pl f.pl"` (separated by `|`
  when a form has a space, "tout petit") and German as an attributive stem that takes endings
  unless `de_indecl`; `de_pred` is the predicative form where it differs.
- **Verbs** give `"3sg/3pl"` present forms; `takes` lists the object classes or kinds a
  transitive verb accepts, or the places an intransitive one happens in (None: any).
- **Places and times** are whole phrases per language, `"key | en | es | de | fr"`, because
  their prepositions are lexical. **Relations** give a dative-governing German preposition;
  a final Spanish/French "de" contracts with the article at render time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Noun:
    key: str
    en: tuple[str, str]  # singular, plural
    es: tuple[str, str, str]  # singular, plural, gender m/f
    de: tuple[str, str, str, str]  # nominative sg, plural, gender m/f/n, acc/dat sg form
    fr: tuple[str, str, str]  # singular, plural, gender m/f
    cls: str  # semantic class, restricts which verbs and relations may use it


def _noun(en: str, es: str, de: str, fr: str, cls: str) -> Noun:
    en_sg, en_pl = en.split()
    es_sg, es_pl, es_g = es.split()
    de_parts = de.split()
    # German weak nouns (der Elefant, den Elefanten) list their oblique singular fourth.
    de_obl = de_parts[3] if len(de_parts) > 3 else de_parts[0]
    fr_sg, fr_pl, fr_g = fr.split()
    return Noun(en_sg, (en_sg, en_pl), (es_sg, es_pl, es_g), (*de_parts[:3], de_obl),
                (fr_sg, fr_pl, fr_g), cls)


OBJECTS = [_noun(*row) for row in [
    ("ball balls", "pelota pelotas f", "Ball Bälle m", "ballon ballons m", "small"),
    ("cup cups", "taza tazas f", "Tasse Tassen f", "tasse tasses f", "small"),
    ("box boxes", "caja cajas f", "Kiste Kisten f", "boîte boîtes f", "container"),
    ("bag bags", "bolsa bolsas f", "Tasche Taschen f", "sac sacs m", "container"),
    ("basket baskets", "cesta cestas f", "Korb Körbe m", "panier paniers m", "container"),
    ("bottle bottles", "botella botellas f", "Flasche Flaschen f", "bouteille bouteilles f", "small"),
    ("book books", "libro libros m", "Buch Bücher n", "livre livres m", "small"),
    ("hat hats", "sombrero sombreros m", "Hut Hüte m", "chapeau chapeaux m", "small"),
    ("key keys", "llave llaves f", "Schlüssel Schlüssel m", "clé clés f", "small"),
    ("lamp lamps", "lámpara lámparas f", "Lampe Lampen f", "lampe lampes f", "small"),
    ("clock clocks", "reloj relojes m", "Uhr Uhren f", "horloge horloges f", "small"),
    ("kite kites", "cometa cometas f", "Drachen Drachen m", "cerf-volant cerfs-volants m", "small"),
    ("table tables", "mesa mesas f", "Tisch Tische m", "table tables f", "furniture"),
    ("chair chairs", "silla sillas f", "Stuhl Stühle m", "chaise chaises f", "furniture"),
    ("bed beds", "cama camas f", "Bett Betten n", "lit lits m", "furniture"),
    ("sofa sofas", "sofá sofás m", "Sofa Sofas n", "canapé canapés m", "furniture"),
    ("door doors", "puerta puertas f", "Tür Türen f", "porte portes f", "fixed"),
    ("window windows", "ventana ventanas f", "Fenster Fenster n", "fenêtre fenêtres f", "fixed"),
    ("house houses", "casa casas f", "Haus Häuser n", "maison maisons f", "building"),
    ("car cars", "coche coches m", "Auto Autos n", "voiture voitures f", "vehicle"),
    ("bus buses", "autobús autobuses m", "Bus Busse m", "bus bus m", "vehicle"),
    ("train trains", "tren trenes m", "Zug Züge m", "train trains m", "vehicle"),
    ("boat boats", "barco barcos m", "Boot Boote n", "bateau bateaux m", "vehicle"),
    ("bicycle bicycles", "bicicleta bicicletas f", "Fahrrad Fahrräder n", "vélo vélos m", "vehicle"),
    ("tree trees", "árbol árboles m", "Baum Bäume m", "arbre arbres m", "plant"),
    ("flower flowers", "flor flores f", "Blume Blumen f", "fleur fleurs f", "plant"),
    ("apple apples", "manzana manzanas f", "Apfel Äpfel m", "pomme pommes f", "food"),
    ("banana bananas", "plátano plátanos m", "Banane Bananen f", "banane bananes f", "food"),
    ("cake cakes", "pastel pasteles m", "Kuchen Kuchen m", "gâteau gâteaux m", "food"),
    ("egg eggs", "huevo huevos m", "Ei Eier n", "œuf œufs m", "food"),
    ("dog dogs", "perro perros m", "Hund Hunde m", "chien chiens m", "animal"),
    ("cat cats", "gato gatos m", "Katze Katzen f", "chat chats m", "pet"),
    ("bird birds", "pájaro pájaros m", "Vogel Vögel m", "oiseau oiseaux m", "pet"),
    ("rabbit rabbits", "conejo conejos m", "Kaninchen Kaninchen n", "lapin lapins m", "pet"),
    ("mouse mice", "ratón ratones m", "Maus Mäuse f", "souris souris f", "pet"),
    ("duck ducks", "pato patos m", "Ente Enten f", "canard canards m", "pet"),
    ("fish fish", "pez peces m", "Fisch Fische m", "poisson poissons m", "pet"),
    ("horse horses", "caballo caballos m", "Pferd Pferde n", "cheval chevaux m", "animal"),
    ("cow cows", "vaca vacas f", "Kuh Kühe f", "vache vaches f", "animal"),
    ("sheep sheep", "oveja ovejas f", "Schaf Schafe n", "mouton moutons m", "animal"),
    ("elephant elephants", "elefante elefantes m", "Elefant Elefanten m Elefanten", "éléphant éléphants m", "animal"),
    ("bear bears", "oso osos m", "Bär Bären m Bären", "ours ours m", "animal"),
]]

# People are only ever subjects (nominative), so German weak-noun forms never arise for them.
# English-neutral roles get one fixed grammatical gender per language, stated here.
PEOPLE = [_noun(*row, "person") for row in [
    ("man men", "hombre hombres m", "Mann Männer m", "homme hommes m"),
    ("woman women", "mujer mujeres f", "Frau Frauen f", "femme femmes f"),
    ("boy boys", "niño niños m", "Junge Jungen m", "garçon garçons m"),
    ("girl girls", "niña niñas f", "Mädchen Mädchen n", "fille filles f"),
    ("baby babies", "bebé bebés m", "Baby Babys n", "bébé bébés m"),
    ("teacher teachers", "profesor profesores m", "Lehrer Lehrer m", "professeur professeurs m"),
    ("doctor doctors", "médico médicos m", "Arzt Ärzte m", "médecin médecins m"),
    ("farmer farmers", "granjero granjeros m", "Bauer Bauern m", "fermier fermiers m"),
    ("cook cooks", "cocinero cocineros m", "Koch Köche m", "cuisinier cuisiniers m"),
    ("baker bakers", "panadero panaderos m", "Bäcker Bäcker m", "boulanger boulangers m"),
    ("nurse nurses", "enfermera enfermeras f", "Krankenschwester Krankenschwestern f", "infirmière infirmières f"),
    ("student students", "estudiante estudiantes m", "Student Studenten m", "étudiant étudiants m"),
    ("king kings", "rey reyes m", "König Könige m", "roi rois m"),
    ("queen queens", "reina reinas f", "Königin Königinnen f", "reine reines f"),
    ("mother mothers", "madre madres f", "Mutter Mütter f", "mère mères f"),
    ("father fathers", "padre padres m", "Vater Väter m", "père pères m"),
    ("brother brothers", "hermano hermanos m", "Bruder Brüder m", "frère frères m"),
    ("sister sisters", "hermana hermanas f", "Schwester Schwestern f", "sœur sœurs f"),
    ("grandmother grandmothers", "abuela abuelas f", "Großmutter Großmütter f", "grand-mère grands-mères f"),
    ("grandfather grandfathers", "abuelo abuelos m", "Großvater Großväter m", "grand-père grands-pères m"),
    ("pilot pilots", "piloto pilotos m", "Pilot Piloten m", "pilote pilotes m"),
    ("painter painters", "pintor pintores m", "Maler Maler m", "peintre peintres m"),
    ("singer singers", "cantante cantantes m", "Sänger Sänger m", "chanteur chanteurs m"),
    ("fisherman fishermen", "pescador pescadores m", "Fischer Fischer m", "pêcheur pêcheurs m"),
    ("gardener gardeners", "jardinero jardineros m", "Gärtner Gärtner m", "jardinier jardiniers m"),
]]

NOUNS = {n.key: n for n in OBJECTS + PEOPLE}


@dataclass(frozen=True)
class Adj:
    key: str
    es: tuple[str, str, str, str]  # m sg, f sg, m pl, f pl
    de: str  # attributive stem; endings are added unless `de_indecl`
    fr: tuple[str, str, str, str]  # m sg, f sg, m pl, f pl
    de_pred: str | None = None  # predicative form when it differs from the stem
    de_indecl: bool = False


def _adj(key: str, es: str, de: str, fr: str, de_pred: str | None = None,
         de_indecl: bool = False) -> Adj:
    # French forms may contain a space ("tout petit"); such rows separate forms with "|".
    fr4 = [f.strip() for f in fr.split("|")] if "|" in fr else fr.split()
    es4 = es.split()
    assert len(es4) == len(fr4) == 4, key
    return Adj(key, tuple(es4), de, tuple(fr4), de_pred, de_indecl)  # type: ignore[arg-type]


COLOURS = {a.key: a for a in [
    _adj("red", "rojo roja rojos rojas", "rot", "rouge rouge rouges rouges"),
    _adj("blue", "azul azul azules azules", "blau", "bleu bleue bleus bleues"),
    _adj("green", "verde verde verdes verdes", "grün", "vert verte verts vertes"),
    _adj("yellow", "amarillo amarilla amarillos amarillas", "gelb", "jaune jaune jaunes jaunes"),
    _adj("black", "negro negra negros negras", "schwarz", "noir noire noirs noires"),
    _adj("white", "blanco blanca blancos blancas", "weiß", "blanc blanche blancs blanches"),
    _adj("brown", "marrón marrón marrones marrones", "braun", "marron marron marron marron"),
    _adj("pink", "rosa rosa rosas rosas", "rosa", "rose rose roses roses", de_indecl=True),
    _adj("purple", "morado morada morados moradas", "violett", "violet violette violets violettes"),
    _adj("orange", "naranja naranja naranjas naranjas", "orangefarben",
         "orange orange orange orange", de_pred="orange"),
    _adj("grey", "gris gris grises grises", "grau", "gris grise gris grises"),
    _adj("golden", "dorado dorada dorados doradas", "golden", "doré dorée dorés dorées"),
]}

# Every French size here is a prenominal adjective, so French order is always
# size + noun + colour.
SIZES = {a.key: a for a in [
    _adj("big", "grande grande grandes grandes", "groß", "grand grande grands grandes"),
    _adj("small", "pequeño pequeña pequeños pequeñas", "klein", "petit petite petits petites"),
    _adj("huge", "enorme enorme enormes enormes", "riesig", "énorme énorme énormes énormes"),
    _adj("tiny", "diminuto diminuta diminutos diminutas", "winzig",
         "tout petit | toute petite | tout petits | toutes petites"),
    _adj("long", "largo larga largos largas", "lang", "long longue longs longues"),
    _adj("fat", "gordo gorda gordos gordas", "dick", "gros grosse gros grosses"),
]}

NUMBERS = {  # count -> (en, es, de, fr); 1 is gendered in es/fr/de and handled by articles
    1: ("one", "", "", ""), 2: ("two", "dos", "zwei", "deux"), 3: ("three", "tres", "drei", "trois"),
    4: ("four", "cuatro", "vier", "quatre"), 5: ("five", "cinco", "fünf", "cinq"),
    6: ("six", "seis", "sechs", "six"), 7: ("seven", "siete", "sieben", "sept"),
    8: ("eight", "ocho", "acht", "huit"), 9: ("nine", "nueve", "neun", "neuf"),
    10: ("ten", "diez", "zehn", "dix"), 11: ("eleven", "once", "elf", "onze"),
    12: ("twelve", "doce", "zwölf", "douze"),
}


@dataclass(frozen=True)
class Verb:
    key: str
    en: tuple[str, str]  # 3rd person singular, plural
    es: tuple[str, str]
    de: tuple[str, str]
    fr: tuple[str, str]
    takes: frozenset[str] | None = None  # object classes / kinds (transitive) or places


def _verb(key: str, en: str, es: str, de: str, fr: str, takes: str | None = None) -> Verb:
    def pair(s: str) -> tuple[str, str]:
        a, b = s.split("/")
        return a, b
    return Verb(key, pair(en), pair(es), pair(de), pair(fr),
                frozenset(takes.split()) if takes else None)


_MOVABLE = "small container food pet"
TRANSITIVE = {v.key: v for v in [
    _verb("see", "sees/see", "ve/ven", "sieht/sehen", "voit/voient"),
    _verb("find", "finds/find", "encuentra/encuentran", "findet/finden", "trouve/trouvent"),
    _verb("draw", "draws/draw", "dibuja/dibujan", "zeichnet/zeichnen", "dessine/dessinent"),
    _verb("paint", "paints/paint", "pinta/pintan", "malt/malen", "peint/peignent"),
    _verb("watch", "watches/watch", "mira/miran", "beobachtet/beobachten", "regarde/regardent"),
    _verb("want", "wants/want", "quiere/quieren", "möchte/möchten", "veut/veulent"),
    _verb("count", "counts/count", "cuenta/cuentan", "zählt/zählen", "compte/comptent"),
    _verb("have", "has/have", "tiene/tienen", "hat/haben", "a/ont",
          f"{_MOVABLE} furniture building vehicle animal plant"),
    _verb("buy", "buys/buy", "compra/compran", "kauft/kaufen", "achète/achètent",
          f"{_MOVABLE} furniture building vehicle animal"),
    _verb("sell", "sells/sell", "vende/venden", "verkauft/verkaufen", "vend/vendent",
          f"{_MOVABLE} furniture building vehicle animal"),
    _verb("carry", "carries/carry", "lleva/llevan", "trägt/tragen", "porte/portent", _MOVABLE),
    _verb("hold", "holds/hold", "sostiene/sostienen", "hält/halten", "tient/tiennent",
          f"{_MOVABLE} flower"),
    _verb("wash", "washes/wash", "lava/lavan", "wäscht/waschen", "lave/lavent",
          "small container furniture vehicle pet dog horse"),
    _verb("clean", "cleans/clean", "limpia/limpian", "putzt/putzen", "nettoie/nettoient",
          "small container furniture vehicle fixed house"),
    _verb("throw", "throws/throw", "lanza/lanzan", "wirft/werfen", "lance/lancent",
          "ball key hat book apple banana egg"),
    _verb("catch", "catches/catch", "atrapa/atrapan", "fängt/fangen", "attrape/attrapent",
          "ball apple egg mouse fish bird rabbit duck"),
    _verb("eat", "eats/eat", "come/comen", "isst/essen", "mange/mangent", "food"),
    _verb("open", "opens/open", "abre/abren", "öffnet/öffnen", "ouvre/ouvrent",
          "box bag bottle book door window"),
    _verb("build", "builds/build", "construye/construyen", "baut/bauen", "construit/construisent",
          "house boat table chair bed box kite"),
    _verb("drive", "drives/drive", "conduce/conducen", "fährt/fahren", "conduit/conduisent",
          "car bus train"),
    _verb("fix", "fixes/fix", "arregla/arreglan", "repariert/reparieren", "répare/réparent",
          "vehicle furniture fixed clock lamp"),
]}

_OUTDOORS = "park garden forest beach farm lake river zoo playground mountains island street"
INTRANSITIVE = {v.key: v for v in [
    _verb("sleep", "sleeps/sleep", "duerme/duermen", "schläft/schlafen", "dort/dorment"),
    _verb("run", "runs/run", "corre/corren", "rennt/rennen", "court/courent", _OUTDOORS),
    _verb("sing", "sings/sing", "canta/cantan", "singt/singen", "chante/chantent"),
    _verb("dance", "dances/dance", "baila/bailan", "tanzt/tanzen", "danse/dansent"),
    _verb("read", "reads/read", "lee/leen", "liest/lesen", "lit/lisent"),
    _verb("swim", "swims/swim", "nada/nadan", "schwimmt/schwimmen", "nage/nagent",
          "beach lake river island"),
    _verb("play", "plays/play", "juega/juegan", "spielt/spielen", "joue/jouent"),
    _verb("wait", "waits/wait", "espera/esperan", "wartet/warten", "attend/attendent"),
    _verb("laugh", "laughs/laugh", "se ríe/se ríen", "lacht/lachen", "rit/rient"),
    _verb("work", "works/work", "trabaja/trabajan", "arbeitet/arbeiten", "travaille/travaillent"),
    _verb("cook", "cooks/cook", "cocina/cocinan", "kocht/kochen", "cuisine/cuisinent"),
    _verb("jump", "jumps/jump", "salta/saltan", "springt/springen", "saute/sautent", _OUTDOORS),
    _verb("eat", "eats/eat", "come/comen", "isst/essen", "mange/mangent"),
    _verb("draw", "draws/draw", "dibuja/dibujan", "zeichnet/zeichnen", "dessine/dessinent"),
    _verb("paint", "paints/paint", "pinta/pintan", "malt/malen", "peint/peignent"),
    _verb("cry", "cries/cry", "llora/lloran", "weint/weinen", "pleure/pleurent"),
    _verb("write", "writes/write", "escribe/escriben", "schreibt/schreiben", "écrit/écrivent"),
]}


@dataclass(frozen=True)
class Phrase:
    """A fixed adverbial (place or time) stored whole per language."""

    key: str
    en: str
    es: str
    de: str
    fr: str


def _phrases(rows: list[str]) -> dict[str, Phrase]:
    out = {}
    for row in rows:
        key, en, es, de, fr = (s.strip() for s in row.split("|"))
        out[key] = Phrase(key, en, es, de, fr)
    return out


PLACES = _phrases([
    "garden     | in the garden      | en el jardín          | im Garten            | dans le jardin",
    "park       | in the park        | en el parque          | im Park              | dans le parc",
    "kitchen    | in the kitchen     | en la cocina          | in der Küche         | dans la cuisine",
    "bedroom    | in the bedroom     | en el dormitorio      | im Schlafzimmer      | dans la chambre",
    "bathroom   | in the bathroom    | en el baño            | im Badezimmer        | dans la salle de bain",
    "living     | in the living room | en el salón           | im Wohnzimmer        | dans le salon",
    "classroom  | in the classroom   | en el aula            | im Klassenzimmer     | dans la salle de classe",
    "school     | at the school      | en la escuela         | in der Schule        | à l'école",
    "library    | in the library     | en la biblioteca      | in der Bibliothek    | à la bibliothèque",
    "office     | at the office      | en la oficina         | im Büro              | au bureau",
    "shop       | in the shop        | en la tienda          | im Laden             | dans le magasin",
    "market     | at the market      | en el mercado         | auf dem Markt        | au marché",
    "restaurant | at the restaurant  | en el restaurante     | im Restaurant        | au restaurant",
    "museum     | at the museum      | en el museo           | im Museum            | au musée",
    "hospital   | at the hospital    | en el hospital        | im Krankenhaus       | à l'hôpital",
    "station    | at the station     | en la estación        | am Bahnhof           | à la gare",
    "airport    | at the airport     | en el aeropuerto      | am Flughafen         | à l'aéroport",
    "street     | on the street      | en la calle           | auf der Straße       | dans la rue",
    "city       | in the city        | en la ciudad          | in der Stadt         | dans la ville",
    "village    | in the village     | en el pueblo          | im Dorf              | dans le village",
    "forest     | in the forest      | en el bosque          | im Wald              | dans la forêt",
    "beach      | at the beach       | en la playa           | am Strand            | à la plage",
    "farm       | on the farm        | en la granja          | auf dem Bauernhof    | à la ferme",
    "zoo        | at the zoo         | en el zoológico       | im Zoo               | au zoo",
    "lake       | at the lake        | en el lago            | am See               | au lac",
    "river      | by the river       | junto al río          | am Fluss             | au bord de la rivière",
    "playground | at the playground  | en el parque infantil | auf dem Spielplatz   | à l'aire de jeux",
    "mountains  | in the mountains   | en las montañas       | in den Bergen        | à la montagne",
    "island     | on the island      | en la isla            | auf der Insel        | sur l'île",
])

# Present tense throughout, so only times compatible with a habitual/ongoing present.
TIMES = _phrases([
    "morning       | in the morning   | por la mañana      | am Morgen     | le matin",
    "afternoon     | in the afternoon | por la tarde       | am Nachmittag | l'après-midi",
    "night         | at night         | por la noche       | in der Nacht  | la nuit",
    "noon          | at noon          | al mediodía        | am Mittag     | à midi",
    "today         | today            | hoy                | heute         | aujourd'hui",
    "now           | now              | ahora              | jetzt         | maintenant",
    "every_day     | every day        | todos los días     | jeden Tag     | tous les jours",
    "every_morning | every morning    | todas las mañanas  | jeden Morgen  | chaque matin",
    "summer        | in summer        | en verano          | im Sommer     | en été",
    "winter        | in winter        | en invierno        | im Winter     | en hiver",
    "spring        | in spring        | en primavera       | im Frühling   | au printemps",
    "autumn        | in autumn        | en otoño           | im Herbst     | en automne",
    "sunday        | on sunday        | el domingo         | am Sonntag    | dimanche",
    "saturday      | on saturday      | el sábado          | am Samstag    | samedi",
])


@dataclass(frozen=True)
class Relation:
    key: str
    en: str
    es: str  # preposition; a final "de" contracts with "el"
    de: str  # governs the dative (location, never direction)
    fr: str  # preposition; a final "de" contracts/elides
    anchors: tuple[str, ...]  # object kinds that make sense as the landmark


_SURFACES = ("table", "chair", "bed", "sofa", "box", "car", "bus", "boat")
_LANDMARKS = ("table", "chair", "bed", "sofa", "box", "basket", "bag", "car", "bus", "boat",
              "house", "tree", "door", "window", "lamp")
RELATIONS = {r.key: r for r in [
    Relation("under", "under", "debajo de", "unter", "sous",
             ("table", "chair", "bed", "sofa", "tree", "car", "bus")),
    Relation("on", "on", "sobre", "auf", "sur", _SURFACES),
    Relation("on_top_of", "on top of", "encima de", "oben auf", "sur", _SURFACES),
    Relation("above", "above", "por encima de", "über", "au-dessus de",
             ("table", "bed", "sofa", "door", "window", "house", "tree", "car")),
    Relation("inside", "inside", "dentro de", "in", "dans",
             ("box", "basket", "bag", "car", "bus", "boat", "house")),
    Relation("next_to", "next to", "al lado de", "neben", "à côté de", _LANDMARKS),
    Relation("behind", "behind", "detrás de", "hinter", "derrière", _LANDMARKS),
    Relation("in_front_of", "in front of", "delante de", "vor", "devant", _LANDMARKS),
    Relation("near", "near", "cerca de", "nahe bei", "près de", _LANDMARKS),
    Relation("far_from", "far from", "lejos de", "weit weg von", "loin de", _LANDMARKS),
]}
