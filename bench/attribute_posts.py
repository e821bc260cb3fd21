"""Posts with CMKP's image-attribute words as one more line of the post text: the prompt-line
experiment of README "Real CMKP results".

CMKP ships, per post, five words an image tagger predicted (`*_attribute_cleaned.txt`, read by
`mmkp-data convert --attributes` into `Post.attributes`). The prompt contract has no line for them
(mmkp_edge.prompt), so to learn whether they help before changing the contract this writes a copy
of a posts file whose text ends with `\\nImage: w1 w2 w3 w4 w5`; a student is trained and evaluated
on such copies exactly like on the originals. Presence (present / absent keyphrases) is judged on
the text, so only the `all` scores compare with a run on the original posts.

    python -m bench.attribute_posts runs/cmkp/valid.jsonl runs/cmkp/valid-attr.jsonl
"""

from __future__ import annotations

import click

from mmkp_edge.posts import read_posts, write_jsonl

LINE = "\nImage: {words}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("posts", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
def main(posts: str, out: str) -> None:
    """Copy POSTS to OUT with each post's attribute words appended to its text."""
    items = read_posts(posts)
    with_words = sum(bool(p.attributes) for p in items)
    if not with_words:
        raise click.ClickException(f"{posts}: no post has attributes (convert CMKP with --attributes)")
    write_jsonl([p.replace(text=p.text + LINE.format(words=" ".join(p.attributes)))
                 if p.attributes else p for p in items], out)
    click.echo(f"{out}: {len(items)} posts, {with_words} with attribute words", err=True)


if __name__ == "__main__":
    main()
