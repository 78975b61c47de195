vspipe -c y4m /-script.vpy - | ffmpeg -hide_banner -y -i - -i '/tmp/line
break.mp4' -map 0:v:0 -map '1:a?' -c:a copy -c:v libx264 -pix_fmt yuv420p -crf 23 -preset veryfast /http:out.mkv
