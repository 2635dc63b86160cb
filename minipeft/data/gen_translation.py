"""A fixed English -> French word lexicon for in-context-learning demos ("cheese => fromage").

What it is: a few hundred common, unambiguous word pairs (nouns, adjectives in the masculine
singular, verbs in the infinitive, a few function words), written by hand for minipeft.

Why: the GPT-3 paper's in-context learning example translates words from a handful of
demonstrations. The lecture shows the same effect, and its failure modes, on a tiny model. The
pretraining corpus mentions these pairs in prose ("The French word for cheese is fromage.") but
never in the demonstration format, so an in-context prompt tests whether the model can use
what it read when the format is new.

The list is data, not random: every seed writes the same file.
"""
from __future__ import annotations

_RAW = """
cheese fromage|bread pain|wine vin|water eau|milk lait|butter beurre|apple pomme|egg œuf
sugar sucre|salt sel|pepper poivre|meat viande|fish poisson|chicken poulet|beef bœuf|pork porc
rice riz|soup soupe|cake gâteau|tea thé|coffee café|beer bière|juice jus|lemon citron
strawberry fraise|cherry cerise|pear poire|grape raisin|tomato tomate|carrot carotte
onion oignon|garlic ail|mushroom champignon|honey miel|chocolate chocolat|salad salade
cream crème|oil huile|vinegar vinaigre|flour farine|lamb agneau|duck canard|bean haricot
almond amande|peach pêche|banana banane|plum prune|cabbage chou|lettuce laitue
cucumber concombre|pie tarte|sausage saucisse|ham jambon|lunch déjeuner|dinner dîner
meal repas|knife couteau|fork fourchette|spoon cuillère|plate assiette|glass verre|cup tasse
bottle bouteille|table table|chair chaise|kitchen cuisine|menu menu|waiter serveur
bill addition|bakery boulangerie|butcher boucher|dog chien|cat chat|horse cheval|cow vache
sheep mouton|pig cochon|bird oiseau|mouse souris|rabbit lapin|bear ours|wolf loup|fox renard
goat chèvre|frog grenouille|snake serpent|bee abeille|butterfly papillon|elephant éléphant
monkey singe|tiger tigre|owl hibou|swan cygne|eagle aigle|hen poule|donkey âne|deer cerf
spider araignée|ant fourmi|whale baleine|shark requin|turtle tortue|house maison|door porte
window fenêtre|bedroom chambre|wall mur|roof toit|bed lit|garden jardin|key clé|lamp lampe
mirror miroir|clock horloge|book livre|letter lettre|pen stylo|paper papier|box boîte|bag sac
shoe chaussure|hat chapeau|shirt chemise|dress robe|coat manteau|sock chaussette|glove gant
ring bague|watch montre|umbrella parapluie|bicycle vélo|car voiture|train train|boat bateau
ship navire|plane avion|road route|street rue|bridge pont|city ville|village village
country pays|church église|school école|hospital hôpital|library bibliothèque|market marché
shop magasin|bank banque|station gare|airport aéroport|museum musée|castle château
tower tour|farm ferme|river rivière|sea mer|lake lac|mountain montagne|forest forêt
tree arbre|flower fleur|grass herbe|leaf feuille|island île|beach plage|sky ciel|sun soleil
moon lune|star étoile|cloud nuage|rain pluie|snow neige|wind vent|fire feu|stone pierre
sand sable|ice glace|earth terre|world monde|night nuit|day jour|morning matin|evening soir
week semaine|month mois|year an|hour heure|time temps|winter hiver|summer été
spring printemps|autumn automne|Monday lundi|Tuesday mardi|Wednesday mercredi
Thursday jeudi|Friday vendredi|Saturday samedi|Sunday dimanche|January janvier
February février|March mars|April avril|June juin|July juillet|August août
September septembre|October octobre|November novembre|December décembre|man homme
woman femme|child enfant|boy garçon|girl fille|mother mère|father père|brother frère
sister sœur|son fils|friend ami|king roi|queen reine|doctor médecin|teacher professeur
baker boulanger|farmer fermier|soldier soldat|student étudiant|husband mari|wife épouse
uncle oncle|aunt tante|grandmother grand-mère|grandfather grand-père|baby bébé
neighbour voisin|cousin cousin|head tête|hand main|foot pied|eye œil|ear oreille|nose nez
mouth bouche|tooth dent|arm bras|leg jambe|heart cœur|face visage|finger doigt|back dos
blood sang|skin peau|knee genou|neck cou|red rouge|blue bleu|green vert|yellow jaune
black noir|white blanc|grey gris|pink rose|purple violet|one un|two deux|three trois
four quatre|five cinq|six six|seven sept|eight huit|nine neuf|ten dix|eleven onze
twelve douze|twenty vingt|hundred cent|thousand mille|big grand|small petit|good bon
bad mauvais|new nouveau|old vieux|young jeune|hot chaud|cold froid|beautiful beau
happy heureux|sad triste|fast rapide|slow lent|long long|short court|high haut|strong fort
weak faible|easy facile|difficult difficile|expensive cher|rich riche|poor pauvre
full plein|empty vide|clean propre|dirty sale|dark sombre|heavy lourd|soft doux|hard dur
sweet sucré|bitter amer|salty salé|fresh frais|quiet calme|loud bruyant|open ouvert
closed fermé|free libre|true vrai|false faux|tired fatigué|hungry affamé|kind gentil
brave courageux|famous célèbre|dangerous dangereux|strange étrange|different différent
eat manger|drink boire|sleep dormir|speak parler|read lire|write écrire|sing chanter
dance danser|run courir|walk marcher|swim nager|see voir|hear entendre|listen écouter
look regarder|give donner|take prendre|buy acheter|sell vendre|close fermer|love aimer
know savoir|think penser|understand comprendre|play jouer|work travailler|live vivre
die mourir|come venir|go aller|leave partir|arrive arriver|find trouver|lose perdre
win gagner|wait attendre|help aider|cook cuisiner|wash laver|build construire
drive conduire|learn apprendre|teach enseigner|begin commencer|finish finir|call appeler
ask demander|answer répondre|forget oublier|laugh rire|cry pleurer|travel voyager
pay payer|choose choisir|carry porter|push pousser|cut couper|paint peindre
draw dessiner|music musique|song chanson|film film|game jeu|money argent|price prix
gift cadeau|question question|word mot|name nom|language langue|voice voix|story histoire
picture image|computer ordinateur|phone téléphone|newspaper journal|ticket billet
holiday vacances|party fête|war guerre|peace paix|life vie|death mort|love amour|dream rêve
idea idée|health santé|hunger faim|thirst soif|fear peur|joy joie|truth vérité
freedom liberté|art art|science science|nature nature|colour couleur|shape forme
restaurant restaurant|pharmacy pharmacie|hotel hôtel|north nord|south sud|east est
west ouest|left gauche|today aujourd'hui|tomorrow demain|yesterday hier|always toujours
never jamais|often souvent|sometimes parfois|here ici|yes oui|no non|thanks merci
hello bonjour|with avec|without sans|and et|but mais|very très|more plus|less moins
under sous|in dans|between entre|before avant|after après
"""


def _parse(raw: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for chunk in raw.replace("\n", "|").split("|"):
        chunk = chunk.strip()
        if not chunk:
            continue
        en, fr = chunk.split(" ")
        if en in seen:          # keep the first translation of a repeated English word
            continue
        seen.add(en)
        pairs.append((en, fr))
    return tuple(pairs)


LEXICON: tuple[tuple[str, str], ...] = _parse(_RAW)
"""(english, french) pairs in a fixed order."""
