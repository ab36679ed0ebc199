"""The page's words in English and Spanish, chosen by the browser's language.

Static labels go through `gr.I18n` (translated in the browser); messages built at run time (errors,
progress, status) are translated on the server from the request's Accept-Language header.
"""

from __future__ import annotations

import gradio as gr

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Proxima: image similarity search",
        "tab_search": "Search",
        "tab_ingest": "Add images",
        "tab_status": "Status",
        "query_image": "Image to search for (drop, upload, paste or webcam)",
        "query_text": "…or describe what you are looking for",
        "query_text_placeholder": "a red bicycle leaning on a wall",
        "top_k": "Number of results",
        "search_image_btn": "Search by image",
        "search_text_btn": "Search by text",
        "results": "Results (click one for more like it)",
        "more_results": "More results",
        "filters": "Filters",
        "captured_from": "Taken from (2024-06-01)",
        "captured_to": "Taken until (2024-06-30)",
        "collections": "Collections",
        "collections_info": "In any of these",
        "formats": "Formats",
        "camera": "Camera",
        "camera_placeholder": "make or model, e.g. Canon EOS 5D",
        "tags": "Tags",
        "tags_placeholder": "beach, sunset (all of them)",
        "min_score": "Minimum score (optional, -1 to 1)",
        "upload_collection": "Collection",
        "upload_collection_info": "Pick one or type a new name to add these images to it; empty: none",
        "no_match": "No images match this search and its filters.",
        "more_found": "{n} results: {m} more in {ms:.0f} ms",
        "upload_files": "Images to add",
        "upload_btn": "Upload and index",
        "folder_path": "Folder on the server (under the allowed roots)",
        "recursive": "Include subfolders",
        "folder_btn": "Index this folder",
        "refresh": "Refresh",
        "random_warning": "⚠️ The model has **random weights** (MODEL_PRETRAINED=random): "
                          "search results are meaningless. Load real weights for real use.",
        "no_query_image": "Add an image first (drop, upload, paste or webcam).",
        "no_query_text": "Type a description first.",
        "text_search_off": "Search by description is off: this index was built with {model}, an image-only "
                           "model (EXTRACTOR={extractor}). Text search needs a CLIP model (EXTRACTOR=open_clip) "
                           "and a new index. Search with an image.",
        "no_files": "Choose one or more images first.",
        "no_folder": "Type the path of a folder on the server first.",
        "no_results": "No indexed images yet: add some on the “Add images” tab.",
        "found": "{n} results in {ms:.0f} ms",
        "like_this": "{n} images like “{name}” in {ms:.0f} ms",
        "bad_input": "That did not work: {detail}",
        "unavailable": "A service is down, try again in a moment: {detail}",
        "not_found": "Not found: {detail}",
        "forbidden": "Not allowed: {detail}",
        "error": "Something went wrong: {detail}",
        "job_progress": "Job {job}: {state}. {done} indexed, {failed} failed of {total}",
        "job_seen": ", {seen} files seen, {skipped} skipped (not images)",
        "job_rate": ", {rate:.1f} images/s",
        "job_eta": ", about {eta:.0f} s left",
        "job_walking": " (still walking the folder)",
        "job_interrupted": ". The folder walk stopped before the end (its process was stopped): start the same "
                           "ingest again to add the rest; what is already indexed is skipped",
        "errors_header": "Files that could not be indexed",
        "status_backend": "Vector database",
        "status_model": "Model",
        "status_vectors": "Indexed images",
        "status_queue": "Batches waiting in the queue",
        "status_flower": "Task dashboard (Flower)",
        "status_problems": "Problems",
        "status_ok": "All services answer.",
        "unknown": "unknown",
        "state_queued": "queued",
        "state_running": "running",
        "state_completed": "completed",
        "state_completed_with_errors": "completed with errors",
        "state_failed": "failed",
        "job_walking_store": " (still going through the stored images)",
        "models_header": "### Models and their indexes",
        "models_state": "State",
        "models_model": "Model",
        "models_slug": "Identity",
        "models_dim": "Dimension",
        "models_vectors": "Vectors",
        "models_progress": "Re-embed",
        "models_none": "No model index yet: the first start of the API or a worker makes one.",
        "model_state_active": "active",
        "model_state_building": "building",
        "model_state_retired": "retired",
        "model_no_job": "no re-embed job on record: start the re-embed of this model again to finish it",
        "model_activates_itself": "becomes active by itself once complete",
        "activate_model": "Model to activate",
        "activate_info": "Only an index that holds every stored image can be activated; searches switch to it "
                         "within a few seconds, the active one is kept as retired.",
        "activate_btn": "Activate",
        "no_model_chosen": "Choose a model to activate first.",
        "model_activated": "{slug} is now the active model: searches use its index (every API process and "
                           "worker within a few seconds).",
        "tab_duplicates": "Duplicates",
        "dup_threshold": "Similarity threshold",
        "dup_threshold_info": "Two images are near-duplicates at this similarity (cosine, up to 1) or above: "
                              "higher finds only closer copies. Empty: the default.",
        "dup_find_btn": "Find duplicates",
        "dup_keep_rule": "Near-duplicates across the whole collection, side by side. ★ marks the copy suggested "
                         "for keeping: the one with the most pixels, then the largest file, then the oldest "
                         "capture date. “Delete the rest” deletes every other copy of the group for good; "
                         "“Keep all” keeps them and takes the group off the list.",
        "dup_delete_rest": "Delete the rest",
        "dup_keep_all": "Keep all",
        "dup_prev": "Previous groups",
        "dup_next": "Next groups",
        "dup_page": "Groups {first}–{last} of {total}",
        "dup_none": "No groups of near-duplicates. “Find duplicates” looks for them across the whole collection.",
        "dup_keeper": "★ keep",
        "dup_similarity": "similarity {score:.4f}",
        "dup_no_date": "date unknown",
        "dup_deleted": "{n} copies deleted; “{name}” kept.",
        "dup_kept": "All {n} images kept; the group of “{name}” is off the list.",
        "dup_progress": "Job {job}: {state}. {done} of {total} images searched",
        "dup_interrupted": ". The run stopped before the end (its worker was stopped): click “Find duplicates” "
                           "again to go on where it stopped",
    },
    "es": {
        "title": "Proxima: búsqueda de imágenes similares",
        "tab_search": "Buscar",
        "tab_ingest": "Añadir imágenes",
        "tab_status": "Estado",
        "query_image": "Imagen a buscar (arrastra, sube, pega o usa la cámara)",
        "query_text": "…o describe lo que buscas",
        "query_text_placeholder": "una bicicleta roja apoyada en una pared",
        "top_k": "Número de resultados",
        "search_image_btn": "Buscar por imagen",
        "search_text_btn": "Buscar por texto",
        "results": "Resultados (haz clic en uno para ver otros parecidos)",
        "more_results": "Más resultados",
        "filters": "Filtros",
        "captured_from": "Tomadas desde (2024-06-01)",
        "captured_to": "Tomadas hasta (2024-06-30)",
        "collections": "Colecciones",
        "collections_info": "En cualquiera de ellas",
        "formats": "Formatos",
        "camera": "Cámara",
        "camera_placeholder": "marca o modelo, p. ej. Canon EOS 5D",
        "tags": "Etiquetas",
        "tags_placeholder": "playa, atardecer (todas ellas)",
        "min_score": "Puntuación mínima (opcional, de -1 a 1)",
        "upload_collection": "Colección",
        "upload_collection_info": "Elige una o escribe un nombre nuevo para añadirle estas imágenes; vacío: ninguna",
        "no_match": "Ninguna imagen cumple esta búsqueda y sus filtros.",
        "more_found": "{n} resultados: {m} más en {ms:.0f} ms",
        "upload_files": "Imágenes a añadir",
        "upload_btn": "Subir e indexar",
        "folder_path": "Carpeta en el servidor (dentro de las raíces permitidas)",
        "recursive": "Incluir subcarpetas",
        "folder_btn": "Indexar esta carpeta",
        "refresh": "Actualizar",
        "random_warning": "⚠️ El modelo tiene **pesos aleatorios** (MODEL_PRETRAINED=random): "
                          "los resultados no tienen sentido. Carga pesos reales para un uso real.",
        "no_query_image": "Primero añade una imagen (arrastra, sube, pega o usa la cámara).",
        "no_query_text": "Primero escribe una descripción.",
        "text_search_off": "La búsqueda por descripción no está disponible: este índice se construyó con {model}, "
                           "un modelo solo de imágenes (EXTRACTOR={extractor}). Buscar por texto requiere un modelo "
                           "CLIP (EXTRACTOR=open_clip) y un índice nuevo. Busca con una imagen.",
        "no_files": "Primero elige una o más imágenes.",
        "no_folder": "Primero escribe la ruta de una carpeta del servidor.",
        "no_results": "Aún no hay imágenes indexadas: añade algunas en la pestaña «Añadir imágenes».",
        "found": "{n} resultados en {ms:.0f} ms",
        "like_this": "{n} imágenes parecidas a «{name}» en {ms:.0f} ms",
        "bad_input": "No ha funcionado: {detail}",
        "unavailable": "Un servicio no responde, inténtalo de nuevo en un momento: {detail}",
        "not_found": "No encontrado: {detail}",
        "forbidden": "No permitido: {detail}",
        "error": "Algo ha fallado: {detail}",
        "job_progress": "Trabajo {job}: {state}. {done} indexadas, {failed} fallidas de {total}",
        "job_seen": ", {seen} archivos vistos, {skipped} omitidos (no son imágenes)",
        "job_rate": ", {rate:.1f} imágenes/s",
        "job_eta": ", faltan unos {eta:.0f} s",
        "job_walking": " (aún recorriendo la carpeta)",
        "job_interrupted": ". El recorrido de la carpeta se detuvo antes del final (su proceso se paró): vuelve a "
                           "lanzar la misma ingesta para añadir el resto; lo ya indexado se omite",
        "errors_header": "Archivos que no se pudieron indexar",
        "status_backend": "Base de datos vectorial",
        "status_model": "Modelo",
        "status_vectors": "Imágenes indexadas",
        "status_queue": "Lotes en espera en la cola",
        "status_flower": "Panel de tareas (Flower)",
        "status_problems": "Problemas",
        "status_ok": "Todos los servicios responden.",
        "unknown": "desconocido",
        "state_queued": "en cola",
        "state_running": "en curso",
        "state_completed": "terminado",
        "state_completed_with_errors": "terminado con errores",
        "state_failed": "fallido",
        "job_walking_store": " (aún recorriendo las imágenes guardadas)",
        "models_header": "### Modelos y sus índices",
        "models_state": "Estado",
        "models_model": "Modelo",
        "models_slug": "Identidad",
        "models_dim": "Dimensión",
        "models_vectors": "Vectores",
        "models_progress": "Reindexado",
        "models_none": "Aún no hay ningún índice de modelo: el primer arranque de la API o de un worker lo crea.",
        "model_state_active": "activo",
        "model_state_building": "en construcción",
        "model_state_retired": "retirado",
        "model_no_job": "no consta ningún trabajo de reindexado: vuelve a lanzar el de este modelo para terminarlo",
        "model_activates_itself": "se activará solo cuando esté completo",
        "activate_model": "Modelo a activar",
        "activate_info": "Solo se puede activar un índice que contenga todas las imágenes guardadas; las búsquedas "
                         "pasan a usarlo en pocos segundos y el activo se conserva como retirado.",
        "activate_btn": "Activar",
        "no_model_chosen": "Primero elige un modelo a activar.",
        "model_activated": "{slug} es ahora el modelo activo: las búsquedas usan su índice (todos los procesos de "
                           "la API y los workers en pocos segundos).",
        "tab_duplicates": "Duplicados",
        "dup_threshold": "Umbral de similitud",
        "dup_threshold_info": "Dos imágenes son casi duplicadas con esta similitud (coseno, hasta 1) o más: "
                              "cuanto más alto, solo copias más parecidas. Vacío: el valor por defecto.",
        "dup_find_btn": "Buscar duplicados",
        "dup_keep_rule": "Imágenes casi duplicadas de toda la colección, una junto a otra. ★ marca la copia que se "
                         "sugiere conservar: la de más píxeles, después la de archivo más grande, después la de "
                         "fecha de captura más antigua. «Borrar las demás» borra para siempre las otras copias "
                         "del grupo; «Conservar todas» las conserva y quita el grupo de la lista.",
        "dup_delete_rest": "Borrar las demás",
        "dup_keep_all": "Conservar todas",
        "dup_prev": "Grupos anteriores",
        "dup_next": "Grupos siguientes",
        "dup_page": "Grupos {first}–{last} de {total}",
        "dup_none": "No hay grupos de imágenes casi duplicadas. «Buscar duplicados» las busca en toda la colección.",
        "dup_keeper": "★ conservar",
        "dup_similarity": "similitud {score:.4f}",
        "dup_no_date": "fecha desconocida",
        "dup_deleted": "{n} copias borradas; se conserva «{name}».",
        "dup_kept": "Se conservan las {n} imágenes; el grupo de «{name}» sale de la lista.",
        "dup_progress": "Trabajo {job}: {state}. {done} de {total} imágenes examinadas",
        "dup_interrupted": ". La búsqueda se detuvo antes del final (su worker se paró): vuelve a pulsar «Buscar "
                           "duplicados» para seguir donde se quedó",
    },
}
i18n = gr.I18n(**TEXTS)


def language(accept_language: str | None) -> str:
    """The first of our languages in an Accept-Language header, by preference weight; English otherwise."""
    ranked: list[tuple[float, int, str]] = []
    for n, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        weight = 1.0
        if params.strip().startswith("q="):
            try:
                weight = float(params.strip()[2:])
            except ValueError:
                weight = 0.0
        ranked.append((-weight, n, tag.split("-")[0].lower()))
    for _, _, lang in sorted(ranked):
        if lang in TEXTS:
            return lang
    return "en"


def t(lang: str, key: str, **values: object) -> str:
    """One message in `lang`, with its {placeholders} filled."""
    return TEXTS.get(lang, TEXTS["en"])[key].format(**values)
